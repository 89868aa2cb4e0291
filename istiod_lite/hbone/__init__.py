"""HBONE client and server ends without ztunnel: send traffic into a waypoint as ztunnel would.

HBONE is TCP tunnelled in HTTP/2 CONNECT over mutual TLS on port 15008, the ambient mesh's data
path.  ``HboneProxy`` runs one Envoy with any number of *outbound tunnels* (plain TCP in,
``CONNECT <VIP:port>`` out to a waypoint, as the client-side ztunnel) and *inbound terminators*
(HBONE in on ``<podIP>:15008``, plain TCP out to the app, as the destination ztunnel).
Credentials are PEM files or a fresh certificate from the mesh CA.  See docs/hbone.md.

Public API: ``HboneConfig``, ``Endpoint``, ``OutboundTunnel``, ``InboundTerminator``,
``HboneProxy``, ``FileCredentials``, ``CaCredentials``, ``CaClient``, ``Credentials``,
``workload_spiffe_id``, ``hbone_bootstrap`` and the errors ``HboneError``, ``CredentialError``,
``CaRequestError``.
"""

from istiod_lite.hbone.bootstrap import hbone_bootstrap
from istiod_lite.hbone.caclient import CaClient, CaRequestError
from istiod_lite.hbone.config import (
    HBONE_PORT,
    Endpoint,
    HboneConfig,
    InboundTerminator,
    OutboundTunnel,
    workload_spiffe_id,
)
from istiod_lite.hbone.credentials import CredentialError, Credentials
from istiod_lite.hbone.proxy import CaCredentials, FileCredentials, HboneError, HboneProxy

__all__ = [
    "HBONE_PORT",
    "CaClient",
    "CaCredentials",
    "CaRequestError",
    "CredentialError",
    "Credentials",
    "Endpoint",
    "FileCredentials",
    "HboneConfig",
    "HboneError",
    "HboneProxy",
    "InboundTerminator",
    "OutboundTunnel",
    "hbone_bootstrap",
    "workload_spiffe_id",
]
