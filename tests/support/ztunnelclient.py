"""A Delta xDS client that behaves as Istio's ztunnel towards istiod (no ztunnel binary here).

The client itself lives in the package (``istiod_lite.hbone.xdsclient``), where the xDS-driven
HBONE node uses it too; this module keeps the tests' import path.
"""

from istiod_lite.hbone.xdsclient import ADDRESS, AUTHORIZATION, MESSAGE_OF, Update, ZtunnelClient, ztunnel_node

__all__ = ["ADDRESS", "AUTHORIZATION", "MESSAGE_OF", "Update", "ZtunnelClient", "ztunnel_node"]
