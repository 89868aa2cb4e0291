"""A plain-HTTP listener for xDS tests that need Envoy to accept some listener.

Not the waypoint shape (that is ``translator/listeners`` and ``translator/shape``): the xDS and
agent end-to-end tests only need a listener Envoy accepts and a route they can change.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"


def _any(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def http_connection_manager(
    stat_prefix: str, route_config: route_pb2.RouteConfiguration
) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_config,
        server_name="istio-envoy",
        server_header_transformation=hcm_pb2.HttpConnectionManager.OVERWRITE,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
    )
    hcm.use_remote_address.value = False
    hcm.use_remote_address.SetInParent()
    hcm.normalize_path.value = True  # Istio's default path normalisation: BASE
    hcm.stream_idle_timeout.SetInParent()  # 0s
    hcm.upgrade_configs.add(upgrade_type="websocket")
    router = router_pb2.Router()
    router.start_child_span = False
    hcm.http_filters.add(name=ROUTER, typed_config=_any(router))
    return hcm


def vip_http_listener(
    name: str, vip: str, port: int, route_config: route_pb2.RouteConfiguration
) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=vip, port_value=port)),
    )
    chain = lst.filter_chains.add(name=route_config.name)
    chain.filters.append(
        listener_components_pb2.Filter(
            name=HCM, typed_config=_any(http_connection_manager(f"inbound_{vip}_{port}", route_config))
        )
    )
    return lst
