"""Istio's own published samples load, validate and translate: real-world input, not ours.

``tests/fixtures/istio-samples/`` holds sample YAML from istio/istio verbatim (README.md there names
the commit).  Each scenario is one sample file with the platform manifests it is meant to be applied
next to (the bookinfo Services and Deployments for a bookinfo VirtualService...), plus a waypoint
Gateway for the ``default`` namespace they all live in.  A scenario must load with no error (kinds a
waypoint has no use for, Deployments or an ingress ``networking.istio.io`` Gateway, are reported as
ignored), translate for the waypoint, and carry the sample's intent into the output (weights,
faults, TCP splits).  The envoy check (marker ``e2e``) feeds each output to ``envoy --mode validate``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from istiod_lite.cli.render import render
from istiod_lite.model.ignored_kinds import IGNORED_KINDS
from istiod_lite.sources import DirectorySource, SourceUpdate
from istiod_lite.translator import WaypointAssembly, WaypointRef
from istiod_lite.translator.diagnostics import diagnose
from tests.golden.test_golden import validation_bootstrap
from tests.support.envoy import envoy_validate

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "istio-samples"
WAYPOINT = WaypointRef("default", "waypoint")

#: The namespace the samples are applied to uses a waypoint (what ``istioctl waypoint apply
#: --enroll-namespace`` makes).
_WAYPOINT_YAML = """\
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{type: IPAddress, value: 127.0.1.1}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

_BOOKINFO = ("bookinfo/platform/kube/bookinfo.yaml",)
_BOOKINFO_VERSIONS = (*_BOOKINFO, "bookinfo/platform/kube/bookinfo-versions.yaml")
_BOOKINFO_SUBSETS = "bookinfo/networking/destination-rule-all.yaml"
_HELLOWORLD = ("helloworld/helloworld.yaml",)
_TCP_ECHO = ("tcp-echo/tcp-echo-services.yaml",)


def _platform(sample: str) -> tuple[str, ...]:
    """The manifests a sample file is applied with (per the samples' own READMEs)."""
    if sample.startswith("bookinfo/platform/"):
        return ()
    if sample.startswith("bookinfo/gateway-api/"):
        return _BOOKINFO_VERSIONS
    if sample.startswith("bookinfo/networking/virtual-service-"):
        return (*_BOOKINFO, _BOOKINFO_SUBSETS)  # "apply the default destination rules" first
    if sample.startswith("bookinfo/"):
        return _BOOKINFO
    if sample.startswith("helloworld/gateway-api/helloworld-route"):
        return (*_HELLOWORLD, "helloworld/gateway-api/helloworld-versions.yaml")
    if sample.startswith("helloworld/") and sample != _HELLOWORLD[0]:
        return _HELLOWORLD
    if sample.startswith("httpbin/") and sample != "httpbin/httpbin.yaml":
        return ("httpbin/httpbin.yaml",)
    if sample in ("tcp-echo/tcp-echo-all-v1.yaml", "tcp-echo/tcp-echo-20-v2.yaml"):
        return _TCP_ECHO
    return ()


SAMPLE_FILES = sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*.yaml"))

#: What each sample means, as it must show in the waypoint's output (a substring of the JSON).
INTENT = {
    "bookinfo/networking/virtual-service-reviews-90-10.yaml": ['"weight": 90', '"weight": 10'],
    "bookinfo/networking/virtual-service-reviews-80-20.yaml": ['"weight": 80', '"weight": 20'],
    "bookinfo/networking/virtual-service-reviews-50-v3.yaml": ['"weight": 50',
                                                               "inbound-vip|9080|http/v3|reviews.default.svc.cluster.local"],
    "bookinfo/networking/virtual-service-reviews-test-v2.yaml": ['"exact": "jason"',
                                                                 "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"],
    "bookinfo/networking/virtual-service-ratings-test-abort.yaml": ['"http_status": 500'],
    "bookinfo/networking/virtual-service-ratings-test-delay.yaml": ['"fixed_delay": "7s"'],
    "bookinfo/networking/fault-injection-details-v1.yaml": ['"http_status": 555'],
    "bookinfo/networking/destination-rule-all.yaml": ["inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"],
    "bookinfo/gateway-api/route-reviews-90-10.yaml": ['"weight": 90', "reviews-v2.default.svc.cluster.local"],
}


def _assign_cluster_ips(text: str, counter: itertools.count[int]) -> str:
    """What the API server does on apply: give each Service without ``clusterIP`` one (from
    127.10.0.0/16 here).  The sample files stay verbatim; only the scenario's copy is rewritten."""
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Service" and not doc.get("spec", {}).get("clusterIP"):
            n = next(counter)
            doc.setdefault("spec", {})["clusterIP"] = f"127.10.{n // 250}.{n % 250 + 1}"
    return yaml.safe_dump_all([d for d in docs if d is not None], sort_keys=False)


def _scenario(sample: str, tmp: Path) -> Path:
    counter = itertools.count()
    for i, rel in enumerate((*_platform(sample), sample)):
        text = (SAMPLES / rel).read_text()
        (tmp / f"{i:02d}-{Path(rel).name}").write_text(_assign_cluster_ips(text, counter))
    (tmp / "zz-waypoint.yaml").write_text(_WAYPOINT_YAML)
    return tmp


def _load(sample: str, tmp: Path) -> SourceUpdate:
    update = DirectorySource(_scenario(sample, tmp)).load()
    assert not update.errors, "\n".join(str(e) for e in update.errors)
    return update


def _translate(update: SourceUpdate) -> str:
    return render(WaypointAssembly(WAYPOINT).proxy_resources(update.snapshot), "json")


def test_the_fixtures_are_there() -> None:
    assert len(SAMPLE_FILES) >= 40
    assert set(INTENT) <= set(SAMPLE_FILES)


@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_sample_loads_without_error_and_translates(sample: str, tmp_path: Path) -> None:
    update = _load(sample, tmp_path)
    for notice in update.notices:  # ignored, never silently: each names its object and the reason
        assert notice.kind and notice.name and "is ignored:" in notice.message, notice
        group = next((g for g, k in IGNORED_KINDS if k == notice.kind), None)
        assert group is not None, notice
    diagnose(update.snapshot)  # every warning pass runs over real input
    out = json.loads(_translate(update))
    clusters = {c["name"] for c in out["clusters"]}
    services = [s for s in update.snapshot.by_kind.get("Service", {}).values() if s.namespace == "default"]
    for svc in services:  # every sample Service is served by the waypoint
        host = f"{svc.name}.default.svc.cluster.local"
        assert any(name.endswith(f"|{host}") for name in clusters), f"no cluster for {host}"


@pytest.mark.parametrize("sample", sorted(INTENT))
def test_sample_intent_reaches_envoy_config(sample: str, tmp_path: Path) -> None:
    text = _translate(_load(sample, tmp_path))
    for expected in INTENT[sample]:
        assert expected in text, f"{sample}: {expected!r} not in the waypoint's config"


def test_deployments_and_ingress_gateways_are_reported_not_rejected(tmp_path: Path) -> None:
    update = _load("bookinfo/networking/bookinfo-gateway.yaml", tmp_path)
    kinds = sorted({(n.kind, n.name) for n in update.notices})
    assert ("Gateway", "bookinfo-gateway") in kinds
    assert ("Deployment", "productpage-v1") in kinds
    # The VirtualService bound to that ingress Gateway is valid but not a mesh route: it is kept.
    assert any(vs.name == "bookinfo" for vs in update.snapshot.by_kind["VirtualService"].values())


@pytest.mark.e2e
@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_sample_output_is_accepted_by_envoy(sample: str, tmp_path: Path) -> None:
    resources = json.loads(_translate(_load(sample, tmp_path)))
    ok, out = envoy_validate(validation_bootstrap(resources))
    assert ok, f"{sample}: rejected by envoy --mode validate:\n{out[-3000:]}"


def test_a_service_without_cluster_ip_is_reported(tmp_path: Path) -> None:
    """Applied as files, the samples' Services have no address (the API server assigns it): the
    waypoint cannot serve them, and says so instead of dropping them silently."""
    (tmp_path / "httpbin.yaml").write_text((SAMPLES / "httpbin/httpbin.yaml").read_text())
    (tmp_path / "zz-waypoint.yaml").write_text(_WAYPOINT_YAML)
    found = diagnose(DirectorySource(tmp_path).load().snapshot)
    assert any(m.startswith("Service default/httpbin: spec.clusterIP is not set") for m in found.routes), found
