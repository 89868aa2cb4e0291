"""Istio's fixed waypoint shape on upstream Envoy: the HBONE listeners and clusters and the
prebuilt parts every service cluster is copied from.  Nothing here depends on user config."""
