"""``explain request`` models ``connect_terminate``'s HBONE TLS handshake: a client certificate whose
SPIFFE ID is outside the trust-domain bundle (MeshConfig ``trustDomain`` + ``trustDomainAliases``,
as the generated ``match_typed_subject_alt_names``) is refused before any HTTP; ``--from NS/SA`` is
expanded in the mesh's trust domain. The differential test checks the verdicts against Envoy."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest

from istiod_lite.cli.main import main
from istiod_lite.explain.envoy_eval.config import EnvoyConfig
from istiod_lite.explain.envoy_eval.handshake import check_peer
from istiod_lite.explain.request import RequestQuery, explain
from istiod_lite.explain.request_text import render_text
from istiod_lite.model.meshconfig import MeshConfig, load_mesh_config
from istiod_lite.sources import DirectorySource
from istiod_lite.translator import WaypointAssembly, WaypointRef

CASE = Path(__file__).resolve().parents[1] / "golden" / "mesh-trust-domain-aliases"
VIP = "127.10.1.31"


def _cfg(mesh: MeshConfig | None) -> EnvoyConfig:
    update = DirectorySource(CASE / "input").load()
    return EnvoyConfig.of(WaypointAssembly(WaypointRef("shop", "waypoint"), mesh=mesh).proxy_resources(update.snapshot))


@pytest.fixture(scope="module")
def aliased() -> EnvoyConfig:
    return _cfg(load_mesh_config(CASE / "mesh.yaml"))


def _query(principal: str | None) -> RequestQuery:
    return RequestQuery(VIP, 8080, "GET", "/", "cart.shop.svc.cluster.local:8080", (), principal)


@pytest.mark.parametrize(("domain", "prefix"), [
    ("new.example", "spiffe://new.example/"),
    ("old.example", "spiffe://old.example/"),
    ("legacy.example", "spiffe://legacy.example/"),
])
def test_trust_domain_and_aliases_pass_the_handshake(aliased: EnvoyConfig, domain: str, prefix: str) -> None:
    exp = explain(aliased, _query(f"spiffe://{domain}/ns/web/sa/frontend"))
    assert exp.handshake is not None and exp.handshake.checked and exp.handshake.accepted
    assert exp.handshake.matched == f"URI prefix {prefix!r}"
    assert exp.outcome["kind"] != "refused" and exp.chain is not None
    # No pods for cart: past the handshake Envoy's router has no endpoint (the differential test agrees).
    assert (exp.outcome["status"], exp.outcome["reason"]) == (503, "no healthy upstream")
    assert f"HBONE handshake (connect_terminate): accepted (URI prefix {prefix!r})" in render_text(exp)


@pytest.mark.parametrize("principal", [
    "spiffe://cluster.local/ns/web/sa/frontend",  # the local-domain spelling is a policy alias, not a SAN one
    "spiffe://foreign.example/ns/web/sa/frontend",
    "spiffe://new.example.evil/ns/web/sa/frontend",  # the prefix ends at the domain's "/"
    "spiffe://NEW.EXAMPLE/ns/web/sa/frontend",  # Envoy's SAN prefix match is case-sensitive
])
def test_other_domains_are_refused_at_the_handshake(aliased: EnvoyConfig, principal: str) -> None:
    exp = explain(aliased, _query(principal))
    assert exp.outcome["kind"] == "refused" and exp.outcome["status"] is None
    assert exp.outcome["by"] == "connect_terminate"
    assert exp.outcome["reason"].startswith("refused at the HBONE TLS handshake")
    # Nothing after the handshake ran: no chain, no filters, no authorization verdict.
    assert exp.chain is None and exp.filters == [] and exp.authorization["allowed"] is None
    doc = exp.to_json()
    assert doc["hboneHandshake"]["accepted"] is False
    assert doc["hboneHandshake"]["acceptedSubjectAltNames"] == [
        "URI prefix 'spiffe://new.example/'", "URI prefix 'spiffe://old.example/'",
        "URI prefix 'spiffe://legacy.example/'"]
    text = render_text(exp)
    assert "HBONE handshake (connect_terminate): REFUSED" in text
    assert "Filter chain:" not in text
    assert "Outcome: refused by connect_terminate: refused at the HBONE TLS handshake" in text


def test_default_trust_domain_accepts_only_cluster_local() -> None:
    cfg = _cfg(None)
    assert explain(cfg, _query("spiffe://cluster.local/ns/web/sa/frontend")).handshake.accepted  # type: ignore[union-attr]
    assert explain(cfg, _query("spiffe://old.example/ns/web/sa/frontend")).outcome["kind"] == "refused"


def test_unknown_peer_or_no_listener_is_not_checked(aliased: EnvoyConfig) -> None:
    exp = explain(aliased, _query(None))
    assert exp.handshake is not None and not exp.handshake.checked and exp.outcome["kind"] != "refused"
    assert any("HBONE peer check not evaluated" in n for n in exp.notes)
    without = dataclasses.replace(aliased, listeners={k: v for k, v in aliased.listeners.items()
                                                        if k != "connect_terminate"})
    check = check_peer(without.listeners.get("connect_terminate"), "spiffe://foreign.example/ns/a/sa/b")
    assert not check.checked and check.accepted and "no connect_terminate listener" in check.reason


def _cli(*extra: str) -> dict[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["--log-level", "ERROR", "explain", "request", "--config", str(CASE / "input"),
                   "--waypoint", "shop/waypoint", "--to", "cart.shop.svc.cluster.local:8080", "-o", "json", *extra])
    assert rc == 0
    doc: dict[str, object] = json.loads(out.getvalue())
    return doc


def test_from_ns_sa_is_expanded_in_the_mesh_trust_domain() -> None:
    doc = _cli("--from", "web/frontend", "--mesh-config", str(CASE / "mesh.yaml"))
    assert doc["request"]["peerPrincipal"] == "spiffe://new.example/ns/web/sa/frontend"  # type: ignore[index]
    assert doc["hboneHandshake"]["accepted"] is True  # type: ignore[index]
    doc = _cli("--from", "web/frontend")
    assert doc["request"]["peerPrincipal"] == "spiffe://cluster.local/ns/web/sa/frontend"  # type: ignore[index]
    doc = _cli("--from", "spiffe://foreign.example/ns/web/sa/frontend", "--mesh-config", str(CASE / "mesh.yaml"))
    assert doc["outcome"]["kind"] == "refused"  # type: ignore[index]
