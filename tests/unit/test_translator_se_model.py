"""ServiceEntry and WorkloadEntry translation rules, one at a time (the golden cases show whole
waypoints): ports and protocols, addresses, endpoints and their ports, binding."""

from __future__ import annotations

from typing import Any

import yaml

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.model.core import Service
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.translator.binding import service_model
from istiod_lite.translator.binding.waypoints import WaypointRef, bindings_of
from istiod_lite.translator.clusters import endpoints

NS = """\
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.1}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def _load(text: str) -> list[Resource]:
    return [parse_object(d) for d in yaml.safe_load_all(text)]


def _se(spec: dict[str, Any], name: str = "se", status: dict[str, Any] | None = None) -> ServiceEntry:
    doc: dict[str, Any] = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                           "metadata": {"name": name, "namespace": "app"}, "spec": spec}
    if status is not None:
        doc["status"] = status
    obj = parse_object(doc)
    assert isinstance(obj, ServiceEntry)
    return obj


def test_service_entry_port_protocol_comes_from_the_protocol_field_only() -> None:
    assert service_model.se_protocol("HTTP") == "http"
    assert service_model.se_protocol("grpc") == "grpc"
    assert service_model.se_protocol("TLS") == "tls"
    assert service_model.se_protocol("UDP") == "udp"
    assert service_model.se_protocol("") == "unsupported"  # sniffed, whatever the port's name says
    se = _se({"hosts": ["a.example.com"], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1"}],
              "ports": [{"number": 80, "name": "http-web"}, {"number": 81, "name": "x", "protocol": "HTTP2"}]})
    (view,) = service_model.of_service_entry(se)
    assert [(p.number, p.protocol, p.chain_kinds) for p in view.ports] == [
        (80, "unsupported", ("http", "tcp")), (81, "http2", ("http",))]


def test_one_view_per_host_with_the_entry_addresses_or_the_allocated_ones() -> None:
    se = _se({"hosts": ["a.example.com", "b.example.com"], "addresses": ["10.9.0.0/16", "10.8.0.1/32"],
              "resolution": "STATIC", "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]})
    views = service_model.of_service_entry(se)
    assert [(v.host, v.name, v.vips) for v in views] == [
        ("a.example.com", "a.example.com", ("10.9.0.0/16", "10.8.0.1")),
        ("b.example.com", "b.example.com", ("10.9.0.0/16", "10.8.0.1"))]
    allocated = _se({"hosts": ["a.example.com", "b.example.com"], "resolution": "DNS",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]},
                    status={"addresses": [{"value": "240.240.0.1", "host": "a.example.com"},
                                          {"value": "240.240.0.2", "host": "b.example.com"}]})
    assert [v.vips for v in service_model.of_service_entry(allocated)] == [("240.240.0.1",), ("240.240.0.2",)]
    dynamic = _se({"hosts": ["*.example.com"], "resolution": "DYNAMIC_DNS",
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                             {"number": 443, "name": "tls", "protocol": "TLS"},
                             {"number": 8080, "name": "grpc", "protocol": "GRPC"}]},
                  status={"addresses": [{"value": "240.240.0.3", "host": "*.example.com"}]})
    (view,) = service_model.of_service_entry(dynamic)
    assert (view.host, view.vips, view.resolution) == ("*.example.com", ("240.240.0.3",), "DYNAMIC_DNS")
    # A waypoint serves exactly the HTTP and TLS ports of a DYNAMIC_DNS entry (config_warnings reports the rest).
    assert [p.number for p in view.served_ports()] == [80, 443]


def _addresses(cla: Any) -> list[tuple[str, int]]:
    out = []
    for loc in cla.endpoints:
        for e in loc.lb_endpoints:
            a = e.endpoint.address
            if a.HasField("envoy_internal_address"):
                ip, _, port = a.envoy_internal_address.endpoint_id.rpartition(":")
                out.append((f"hbone:{ip}", int(port)))
            else:
                out.append((a.socket_address.address, a.socket_address.port_value))
    return out


def test_service_entry_endpoint_ports_and_dns_host_fallback() -> None:
    se = _se({"hosts": ["a.example.com"], "resolution": "STATIC",
              "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                        {"number": 81, "name": "admin", "protocol": "HTTP"}],
              "endpoints": [{"address": "10.0.0.1", "ports": {"http": 9000}}, {"address": "10.0.0.2"}]})
    snap = ConfigSnapshot.build([se], 1)
    (view,) = service_model.of_service_entry(se)
    http, admin = view.ports
    assert _addresses(endpoints.service_load_assignment("c", snap, view, http)) == [("10.0.0.1", 9000),
                                                                                   ("10.0.0.2", 8080)]
    assert _addresses(endpoints.service_load_assignment("c", snap, view, admin)) == [("10.0.0.1", 81), ("10.0.0.2", 81)]
    dns = _se({"hosts": ["db.example.com"], "resolution": "DNS",
               "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}]})
    (dview,) = service_model.of_service_entry(dns)
    assert _addresses(endpoints.service_load_assignment("c", snap, dview, dview.ports[0])) == [("db.example.com", 5432)]


def test_workload_entries_are_endpoints_of_a_service_that_selects_them() -> None:
    objs = _load(NS + """
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 90, targetPort: grpc-port}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: by-name, namespace: app}
spec: {address: 10.1.0.1, ports: {http: 18080, grpc-port: 19090}, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: plain, namespace: app, labels: {app: web}}
spec: {address: 10.1.0.2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-app, namespace: app, labels: {app: other}}
spec: {address: 10.1.0.3}
""")
    snap = ConfigSnapshot.build(objs, 1)
    svc = snap.get(Service, "app", "web")
    assert svc is not None
    view = service_model.of_service(svc)
    http, grpc = view.ports
    assert _addresses(endpoints.service_load_assignment("c", snap, view, http)) == [("10.1.0.1", 18080),
                                                                                   ("10.1.0.2", 8080)]
    # A named target port the entry does not declare: that entry has no endpoint on the port.
    assert _addresses(endpoints.service_load_assignment("c", snap, view, grpc)) == [("10.1.0.1", 19090)]


def test_service_entries_and_workload_entries_bind_like_services_and_pods() -> None:
    objs = _load(NS + """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bound, namespace: app}
spec: {hosts: [a.example.com], resolution: NONE, ports: [{number: 80, name: http, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: opted-out, namespace: app, labels: {istio.io/use-waypoint: none}}
spec: {hosts: [b.example.com], resolution: NONE, ports: [{number: 80, name: http, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: app}
spec: {address: 10.2.0.1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: by-name, namespace: app}
spec: {address: vm.example.com}
""")
    b = bindings_of(ConfigSnapshot.build(objs, 1))
    ref = WaypointRef("app", "waypoint")
    assert [se.name for se in b.service_entries[ref]] == ["bound"]
    assert [we.name for we in b.workload_entries[ref]] == ["vm"]  # a host-name address is no workload IP
    assert b.workload_ips(ref) == ["10.2.0.1"]
