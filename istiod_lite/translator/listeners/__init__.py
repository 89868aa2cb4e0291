"""The ``main_internal`` listener: per service port filter chains, their connection managers and
the matcher that picks a chain by destination address, port and sniffed protocol."""
