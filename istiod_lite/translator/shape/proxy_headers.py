"""MeshConfig ``defaultConfig.proxyHeaders`` on the waypoint's HTTP connection managers.

istiod derives one set of header settings per proxy (``GetProxyHeadersFromProxyConfig``, inbound
listener class) and applies part of it to each HCM it builds for a waypoint:

* ``connect_terminate``: server name and ``Server`` header handling, request-id generation and
  ``forward_client_cert_details`` (its ``set_current_client_cert_details`` stays fixed);
* the HTTP chains of ``main_internal``: server name and handling, request-id generation,
  ``append_x_forwarded_port``, and the router's ``suppress_envoy_headers``.

The other proxyHeaders fields (attempt count, x-forwarded-host, HTTP/1 header case, metadata
exchange headers, setCurrentClientCertDetails) are not applied on a waypoint; they are listed as
ignored (model/meshconfig_fields.py).  Defaults equal the fixed shape used before, so a mesh
config without proxyHeaders changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.model.meshconfig import MeshConfig

_HCM = hcm_pb2.HttpConnectionManager
#: istiod's ``EnvoyServerName``.
SERVER_NAME: Final = "istio-envoy"


@dataclass(frozen=True, slots=True)
class HeaderSettings:
    server_name: str = SERVER_NAME
    #: ``Server`` header passed through from upstream instead of overwritten (``server.disabled``).
    pass_through_server: bool = False
    #: ``generate_request_id``: None leaves Envoy's default (generate).
    generate_request_id: bool | None = None
    forward_client_cert: int = _HCM.APPEND_FORWARD
    suppress_envoy_headers: bool = False
    append_x_forwarded_port: bool = False


DEFAULT_HEADERS: Final = HeaderSettings()


def header_settings(mesh: MeshConfig | None) -> HeaderSettings:
    """The waypoint's header settings from ``defaultConfig.proxyHeaders`` (istiod's mapping)."""
    ph = mesh.default_config.proxy_headers if mesh is not None else None
    if ph is None:
        return DEFAULT_HEADERS
    server_name, pass_through = SERVER_NAME, False
    if ph.server is not None:
        if ph.server.disabled:
            server_name, pass_through = "", True
        elif ph.server.value:
            server_name = ph.server.value
    fcc = _HCM.APPEND_FORWARD
    if ph.forwarded_client_cert != "UNDEFINED":
        fcc = _HCM.ForwardClientCertDetails.Value(ph.forwarded_client_cert)
    return HeaderSettings(
        server_name=server_name,
        pass_through_server=pass_through,
        generate_request_id=False if ph.request_id is not None and ph.request_id.disabled else None,
        forward_client_cert=fcc,
        suppress_envoy_headers=bool(ph.envoy_debug_headers is not None and ph.envoy_debug_headers.disabled),
        append_x_forwarded_port=bool(ph.x_forwarded_port is not None and ph.x_forwarded_port.enabled),
    )


def _common(hcm: hcm_pb2.HttpConnectionManager, s: HeaderSettings) -> None:
    hcm.server_name = s.server_name
    if s.pass_through_server:
        hcm.server_header_transformation = _HCM.PASS_THROUGH
    if s.generate_request_id is not None:
        hcm.generate_request_id.value = s.generate_request_id
        hcm.generate_request_id.SetInParent()


def apply_to_chain_hcm(hcm: hcm_pb2.HttpConnectionManager, s: HeaderSettings) -> None:
    """An HTTP chain of ``main_internal`` (``buildWaypointInboundHTTPFilters``)."""
    if s == DEFAULT_HEADERS:
        return
    _common(hcm, s)
    if s.append_x_forwarded_port:
        hcm.append_x_forwarded_port = True


def apply_to_connect_terminate(hcm: hcm_pb2.HttpConnectionManager, s: HeaderSettings) -> None:
    """``connect_terminate``'s HCM (``buildHCMConnectTerminateChain``)."""
    if s == DEFAULT_HEADERS:
        return
    _common(hcm, s)
    hcm.forward_client_cert_details = s.forward_client_cert


__all__ = ["DEFAULT_HEADERS", "SERVER_NAME", "HeaderSettings", "apply_to_chain_hcm", "apply_to_connect_terminate",
           "header_settings"]
