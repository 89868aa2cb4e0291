"""What node proxies (ztunnel) are served: workload addresses and L4 authorization (Istio's workload API).

``ZtunnelTranslator`` (``translator.py``) turns a snapshot into ``istio.workload.Address`` and
``istio.security.Authorization`` resources, named as istiod names them, re-using the message of
every address whose inputs did not change (so a pod edit re-serialises one resource).
"""

from istiod_lite.translator.ztunnel.names import ADDRESS, AUTHORIZATION, ZtunnelOptions
from istiod_lite.translator.ztunnel.translator import ZtunnelTranslation, ZtunnelTranslator

__all__ = ["ADDRESS", "AUTHORIZATION", "ZtunnelOptions", "ZtunnelTranslation", "ZtunnelTranslator"]
