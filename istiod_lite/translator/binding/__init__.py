"""Which waypoints exist, which services and workloads each serves (Istio's ``use-waypoint``
rules), and the service view (ports, protocols, VIPs) the rest of the translator works on."""
