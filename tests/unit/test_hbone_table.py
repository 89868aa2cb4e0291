"""``MeshTable``: the node's routing and L4 authorization, from what the ztunnel translator serves."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from google.protobuf.message import Message

from istiod_lite._generated.istio.security import authorization_pb2 as az
from istiod_lite._generated.istio.workload import workload_pb2 as wl
from istiod_lite.hbone import Endpoint
from istiod_lite.hbone.authorizer import decide
from istiod_lite.hbone.node import proxy_header
from istiod_lite.hbone.table import MeshTable, Peer
from istiod_lite.sources import DirectorySource
from istiod_lite.translator.core.output import as_message
from istiod_lite.translator.ztunnel import ADDRESS, AUTHORIZATION, ZtunnelTranslator

CONFIG = """apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 10.0.0.50}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.1
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.2
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8081}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-2, namespace: shop, labels: {app: cart}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-3, namespace: shop, labels: {app: cart}}
status: {podIP: 10.1.0.3, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: legacy}
spec:
  clusterIP: 10.96.0.3
  selector: {app: old}
  ports: [{name: http, port: 80, targetPort: 8082}]
---
apiVersion: v1
kind: Pod
metadata: {name: old-1, namespace: legacy, labels: {app: old}}
status: {podIP: 10.2.0.1}
"""
STRICT = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-bad-subnet, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [192.168.7.0/24]}}]}]
"""


def table(tmp_path: Path, text: str) -> MeshTable:
    (tmp_path / "c.yaml").write_text(text)
    update = DirectorySource(tmp_path).load()
    assert not update.errors, [str(e) for e in update.errors]
    res = ZtunnelTranslator().translate(update.snapshot).resources.by_type
    msgs: dict[str, dict[str, Message]] = {t: {n: as_message(m) for n, m in res[t].items()}
                                           for t in (ADDRESS, AUTHORIZATION)}
    return MeshTable.build(msgs[ADDRESS], msgs[AUTHORIZATION])


def test_routes_follow_waypoints_tunnel_protocol_and_health(tmp_path: Path) -> None:
    t = table(tmp_path, CONFIG)
    # A service with a waypoint: CONNECT VIP:port to the waypoint's 15008.
    hop = t.route(Endpoint("10.96.0.1", 9080))
    assert hop is not None and (hop.kind, str(hop.target), str(hop.peer)) == \
        ("waypoint", "10.96.0.1:9080", "10.0.0.50:15008")
    assert hop.via == "waypoint 10.0.0.50"
    # Without: an ambient workload over HBONE, round robin over the ready ones only.
    hops = {(h.kind, str(h.target), str(h.peer)) for i in range(4)
            if (h := t.route(Endpoint("10.96.0.2", 80), i)) is not None}
    assert hops == {("hbone", "10.1.0.1:8081", "10.1.0.1:15008"), ("hbone", "10.1.0.2:8081", "10.1.0.2:15008")}
    # A pod outside the mesh: plaintext to its target port.
    hop = t.route(Endpoint("10.96.0.3", 80))
    assert hop is not None and (hop.kind, str(hop.target), hop.peer) == ("plaintext", "10.2.0.1:8082", None)
    # A workload address: the workload itself; unknown addresses and ports: no route.
    hop = t.route(Endpoint("10.1.0.1", 8081))
    assert hop is not None and hop.kind == "hbone" and str(hop.target) == "10.1.0.1:8081"
    assert t.route(Endpoint("10.96.0.2", 81)) is None and t.route(Endpoint("10.9.9.9", 80)) is None
    assert [str(e) for e in t.service_endpoints()] == ["10.96.0.1:9080", "10.96.0.2:80", "10.96.0.3:80"]


def test_strict_refuses_plaintext_and_policies_apply_by_scope(tmp_path: Path) -> None:
    dest = Endpoint("10.1.0.1", 8081)
    ok, why = table(tmp_path, CONFIG).authorize(dest, Peer("10.3.0.1"))
    assert ok, why
    t = table(tmp_path, CONFIG + STRICT)
    ok, why = t.authorize(dest, Peer("10.3.0.1"))
    assert not ok and why == "denied by istio-system/istio_converted_static_strict"
    assert t.authorize(dest, Peer("10.3.0.1", "spiffe://cluster.local/ns/client/sa/client"))[0]
    # The root-namespace DENY is GLOBAL: it applies to a workload outside the STRICT namespace too.
    ok, why = t.authorize(Endpoint("10.2.0.1", 8082), Peer("192.168.7.9", "spiffe://cluster.local/ns/a/sa/b"))
    assert not ok and why == "denied by istio-system/no-bad-subnet"
    assert t.authorize(Endpoint("10.2.0.1", 8082), Peer("10.3.0.1"))[0]


def test_proxy_header_names_the_authority_as_source_and_the_peer_as_destination() -> None:
    assert proxy_header(Endpoint("10.96.0.1", 9080), Endpoint("10.0.0.50", 15008)) == \
        b"PROXY TCP4 10.96.0.1 10.0.0.50 9080 15008\r\n"
    assert proxy_header(Endpoint("fd00::1", 80), Endpoint("fd00::2", 15008)) == \
        b"PROXY TCP6 fd00::1 fd00::2 80 15008\r\n"


# --- inbound HBONE: policies matched on the peer's identity, source IP and destination port ---------

POLICIES = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-web, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]
  - from: [{source: {namespaces: [ops]}}]
    to: [{operation: {ports: ["8081"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-bad-pods, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.9.0.0/16], notPrincipals: ["*/sa/admin"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-web-elsewhere, namespace: legacy}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [nobody]}}]}]
"""
WEB = "spiffe://cluster.local/ns/front/sa/web"


def test_inbound_policies_match_identity_source_ip_and_port(tmp_path: Path) -> None:
    t = table(tmp_path, CONFIG + POLICIES)
    cart = Endpoint("10.1.0.1", 8081)
    # The namespace's ALLOW: web's principal anywhere; the ops namespace only on 8081.
    assert t.authorize(cart, Peer("10.3.0.1", WEB)) == (True, "allowed by shop/from-web")
    assert t.authorize(cart, Peer("10.3.0.1", "spiffe://cluster.local/ns/ops/sa/x"))[0]
    assert t.authorize(Endpoint("10.1.0.1", 9999), Peer("10.3.0.1", "spiffe://cluster.local/ns/ops/sa/x")) == \
        (False, "no ALLOW policy matched")
    assert t.authorize(cart, Peer("10.3.0.1", "spiffe://cluster.local/ns/front/sa/other")) == \
        (False, "no ALLOW policy matched")
    # No identity (plaintext) matches no principal or namespace.
    assert t.authorize(cart, Peer("10.3.0.1")) == (False, "no ALLOW policy matched")
    # DENY first: web from the bad subnet is refused, unless its service account is admin.
    assert t.authorize(cart, Peer("10.9.1.1", WEB)) == (False, "denied by shop/no-bad-pods")
    ok, why = t.authorize(cart, Peer("10.9.1.1", "spiffe://cluster.local/ns/front/sa/admin"))
    assert (ok, why) == (False, "no ALLOW policy matched")  # not denied; then no ALLOW matches it
    # Another namespace's policies do not apply here, and vice versa.
    assert t.authorize(Endpoint("10.2.0.1", 8082), Peer("10.3.0.1", WEB)) == (False, "no ALLOW policy matched")


def _policy(action: int, *matches: az.Match, rules: int = 1) -> az.Authorization:
    p = az.Authorization(name="p", namespace="shop", scope=az.NAMESPACE, action=action)  # type: ignore[arg-type]
    g = p.groups.add()
    for _ in range(rules):
        g.rules.add().matches.extend(matches)
    return p


def _with(*policies: az.Authorization) -> MeshTable:
    w = wl.Workload(uid="u", name="cart-1", namespace="shop", addresses=[ipaddress.ip_address("10.1.0.1").packed])
    return MeshTable.build({"u": wl.Address(workload=w)},
                           {f"shop/{i}": p for i, p in enumerate(policies)})


def test_match_edge_cases_follow_ztunnel() -> None:
    dest, web = Endpoint("10.1.0.1", 8081), Peer("10.3.0.1", WEB)
    # A match with no field set matches nothing (ztunnel skips it), so this ALLOW refuses everyone ...
    assert _with(_policy(az.ALLOW, az.Match())).authorize(dest, web) == (False, "no ALLOW policy matched")
    # ... while a rule whose clause has no matches matches everything.
    assert _with(_policy(az.ALLOW)).authorize(dest, web)[0]
    # A policy without groups matches nothing: an empty DENY denies nothing, an empty ALLOW allows nothing.
    empty_deny = az.Authorization(name="d", namespace="shop", scope=az.NAMESPACE, action=az.DENY)
    assert _with(empty_deny).authorize(dest, web)[0]
    # Entries ztunnel cannot read are dropped: a field holding only those matches anything.
    unset = az.Match(principals=[az.StringMatch()], destination_ports=[8081])
    assert _with(_policy(az.ALLOW, unset)).authorize(dest, Peer("10.3.0.1"))[0]
    bad_ip = az.Match(source_ips=[az.Address(address=b"\x01", length=8)], destination_ports=[8081])
    assert _with(_policy(az.ALLOW, bad_ip)).authorize(dest, web)[0]
    # Presence needs a non-empty value; a peer without identity has none.
    present = az.Match()
    present.namespaces.add().presence.SetInParent()
    assert _with(_policy(az.ALLOW, present)).authorize(dest, web)[0]
    assert not _with(_policy(az.ALLOW, present)).authorize(dest, Peer("10.3.0.1"))[0]
    # Service account match ignores the trust domain; principals and not_* are exact.
    sa = az.Match(service_accounts=[az.ServiceAccountMatch(namespace="front", serviceAccount="web")])
    assert _with(_policy(az.ALLOW, sa)).authorize(dest, Peer("1.1.1.1", "spiffe://other.td/ns/front/sa/web"))[0]
    not_web = az.Match(not_principals=[az.StringMatch(exact="cluster.local/ns/front/sa/web")])
    assert _with(_policy(az.DENY, not_web)).authorize(dest, web)[0]
    assert not _with(_policy(az.DENY, not_web)).authorize(dest, Peer("1.1.1.1", "spiffe://cluster.local/ns/front/sa/x"))[0]
    # Source blocks with a prefix length, and destination ports.
    block = az.Match(source_ips=[az.Address(address=ipaddress.ip_address("10.3.0.0").packed, length=24)],
                     not_destination_ports=[9999])
    assert _with(_policy(az.ALLOW, block)).authorize(dest, web)[0]
    assert not _with(_policy(az.ALLOW, block)).authorize(dest, Peer("10.4.0.1", WEB))[0]
    assert not _with(_policy(az.ALLOW, block)).authorize(Endpoint("10.1.0.1", 9999), web)[0]


def test_inbound_decision_from_envoy_attributes(tmp_path: Path) -> None:
    t = table(tmp_path, CONFIG + POLICIES)
    ok = decide(t, WEB, "10.3.0.1", "10.1.0.1:8081")
    assert (ok.allowed, ok.status, ok.target, ok.peer.identity) == (True, 200, Endpoint("10.1.0.1", 8081), WEB)
    # ztunnel answers a policy refusal with 401.
    no = decide(t, "spiffe://cluster.local/ns/front/sa/other", "10.3.0.1", "10.1.0.1:8081")
    assert (no.allowed, no.status, no.why) == (False, 401, "no ALLOW policy matched")
    # A certificate without a SPIFFE URI is no identity at all.
    assert decide(t, "CN=web", "10.3.0.1", "10.1.0.1:8081").peer.identity is None
    # A CONNECT to something that is not a workload, or that cannot be parsed: 400.
    assert (decide(t, WEB, "10.3.0.1", "10.8.8.8:80").status, decide(t, WEB, "10.3.0.1", "nonsense").status) == \
        (400, 400)
