"""Reusable test support: free ports and loopback addresses, real Envoy processes, real HTTP backends.

Everything here binds or targets loopback (127.0.0.0/8) addresses only.
"""
