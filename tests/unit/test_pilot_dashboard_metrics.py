"""Every series Istio's control-plane dashboards query is either served by a running control plane
with Istio's name, type and labels, or listed in docs/observability.md as not applicable, with a
reason — and the docs' tables and the server agree.

The control plane is real (in-process, config directory, CA on); one ADS client connects as a
waypoint over real gRPC, takes CDS, EDS, LDS and RDS responses and NACKs each (so the reject series
exist with real values), then sends a stale nonce.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

from istiod_lite.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.support.adsclient import waypoint_node
from tests.support.controlplane import control_plane
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_METRICS = ROOT / "tests" / "unit" / "data" / "pilot_dashboard_metrics.txt"
DOCS = ROOT / "docs" / "observability.md"
CONFIG = ROOT / "tests" / "golden" / "bookinfo" / "input"
SHORT = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
REVIEWS_ROUTE = "inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local"
INTERNAL = 13  # grpc INTERNAL: what Envoy puts in error_detail when it rejects a config

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Exposition:
    """A parsed text-format scrape: family types, and samples as (labels, value) by sample name."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        out = cls()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                out.types[name] = kind
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m is not None, f"unparsable sample line {line!r}"
                labels = dict(_LABEL.findall(m.group(2) or ""))
                out.samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
        return out

    def family_samples(self, family: str) -> list[tuple[dict[str, str], float]]:
        names = (family, f"{family}_total", f"{family}_bucket", f"{family}_sum", f"{family}_count")
        return [s for n in names for s in self.samples.get(n, [])]

    def value(self, name: str, **labels: str) -> float | None:
        for sample_labels, value in self.samples.get(name, []):
            if sample_labels == labels:
                return value
        return None


def dashboard_metrics() -> set[str]:
    lines = DASHBOARD_METRICS.read_text().splitlines()
    names = {line.split("\t")[0] for line in lines if line and not line.startswith("#")}
    assert len(names) > 20, "the dashboard list looks truncated"
    return names


def docs_table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first Markdown table after ``heading`` in the docs."""
    text = DOCS.read_text()
    assert heading in text, f"docs/observability.md lost its section {heading!r}"
    rows: list[list[str]] = []
    for line in text[text.index(heading):].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    return rows[2:]  # header and separator


def code_name(cell: str) -> str:
    m = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cell)
    assert m is not None, f"the first cell should be one metric name in backticks: {cell!r}"
    return m.group(1)


def exposed_table() -> dict[str, tuple[str, set[str]]]:
    """Metric -> (type, label names) from the docs' control-plane table."""
    out: dict[str, tuple[str, set[str]]] = {}
    for cells in docs_table("## Control-plane metrics (`:15014/metrics`)"):
        labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
        out[code_name(cells[0])] = (cells[1], labels)
    return out


def not_applicable_table() -> dict[str, str]:
    """Metric -> reason from the docs' table of dashboard series not served."""
    out: dict[str, str] = {}
    for cells in docs_table("### Dashboard series not served by istiod-lite"):
        assert len(cells) == 3 and cells[1], f"every not-applicable row needs a reason: {cells}"
        out[code_name(cells[0])] = cells[1]
    return out


class Client:
    """A waypoint's SotW ADS stream: requests in through a queue, responses collected by type."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._requests: asyncio.Queue[d.DiscoveryRequest | None] = asyncio.Queue()
        self.node = waypoint_node(0, namespace="bookinfo")
        self.responses: dict[str, list[d.DiscoveryResponse]] = {}
        self._task: asyncio.Task[None] | None = None

    async def _requests_iter(self) -> AsyncIterator[d.DiscoveryRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    async def _run(self) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        async for resp in stub.StreamAggregatedResources(self._requests_iter()):
            self.responses.setdefault(resp.type_url, []).append(resp)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def send(self, type_url: str, names: list[str] | None = None, nonce: str = "", version: str = "",
             error: str | None = None) -> None:
        req = d.DiscoveryRequest(type_url=type_url, resource_names=names or [], response_nonce=nonce,
                                 version_info=version)
        if not nonce:
            req.node.CopyFrom(self.node)
        if error is not None:
            req.error_detail.code = INTERNAL
            req.error_detail.message = error
        self._requests.put_nowait(req)

    async def first(self, type_url: str) -> d.DiscoveryResponse:
        await wait_until(lambda: self.responses.get(type_url), timeout=10, message=f"a {type_url} response")
        return self.responses[type_url][0]

    async def close(self) -> None:
        self._requests.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


async def scrape(port: int) -> Exposition:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return Exposition.parse(await resp.text())


async def test_dashboard_series_are_served_or_documented_not_applicable(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    shutil.copytree(CONFIG, cfg)
    async with control_plane(cfg, ca_dir=tmp_path / "ca") as cp:
        client = Client(cp.grpc_port)
        client.start()
        try:
            # CDS and LDS (wildcard); EDS and RDS for names the first responses carry.
            for type_url in (CLUSTER, LISTENER):
                client.send(type_url)
            cds, lds = await client.first(CLUSTER), await client.first(LISTENER)
            assert cds.resources and lds.resources, "the bookinfo waypoint has clusters and listeners"
            client.send(ENDPOINT, ["inbound-vip|9080|http/v1|reviews.bookinfo.svc.cluster.local"])
            client.send(ROUTE, [REVIEWS_ROUTE])
            eds, rds = await client.first(ENDPOINT), await client.first(ROUTE)
            assert eds.resources and rds.resources, "the named endpoints and route exist"
            for resp in (cds, lds, eds, rds):
                client.send(resp.type_url, nonce=resp.nonce, error=f"rejected {SHORT[resp.type_url]} on purpose")
            client.send(CLUSTER, nonce="no-such-nonce")  # stale
            await wait_until(lambda: _rejects_counted(cp.monitoring_port), timeout=10,
                             message="the four NACKs and the stale nonce counted")
            # A config change: a push, triggered and counted as istiod counts it.
            canary = cfg / "30-reviews-canary.yaml"
            text = canary.read_text()
            canary.write_text(text.replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30"))
            scraped = await wait_until(lambda: _pushed(cp.monitoring_port), timeout=10,
                                       message="the VirtualService update pushed")
            assert len(client.responses[ROUTE]) >= 2, "the edited route reached the client"
        finally:
            await client.close()

    assert scraped is not None
    exposed, node = scraped, client.node.id
    for short in SHORT.values():
        assert exposed.value(f"pilot_xds_{short}_reject", node=node, err="Internal") == 1
        assert exposed.value("pilot_total_xds_rejects", type=short) == 1
        assert (exposed.value("pilot_xds_pushes", type=short) or 0) >= 1
    assert exposed.value("pilot_xds_expired_nonce", type="cds") == 1
    assert exposed.value("pilot_xds", version="") == 1
    assert exposed.value("pilot_xds_send_time_count") == sum(
        v for _, v in exposed.samples["pilot_xds_pushes"])
    assert exposed.value("pilot_conflict_inbound_listener") == 0
    assert exposed.value("pilot_conflict_outbound_listener_tcp_over_current_tcp") == 0
    assert exposed.value("istio_build", component="pilot", tag=exposed.samples["istio_build"][0][0]["tag"]) == 1
    assert exposed.value("pilot_virt_services") == 1  # bookinfo's reviews canary
    assert exposed.value("pilot_k8s_cfg_events", type="VirtualService", event="add") == 1
    assert exposed.value("pilot_k8s_cfg_events", type="VirtualService", event="update") == 1
    assert (exposed.value("pilot_proxy_convergence_time_count") or 0) >= 1
    assert (exposed.value("process_cpu_seconds_total") or 0) > 0
    assert (exposed.value("process_resident_memory_bytes") or 0) > 0
    assert (exposed.value("citadel_server_root_cert_expiry_timestamp") or 0) > 0

    wanted, not_applicable, documented = dashboard_metrics(), not_applicable_table(), exposed_table()
    served = set(exposed.samples)
    missing = sorted(m for m in wanted if m not in served and m not in not_applicable)
    assert not missing, f"dashboard series neither served nor documented as not applicable: {missing}"
    both = sorted(set(not_applicable) & served)
    assert not both, f"documented as not applicable but served: {both}"
    stale_docs = sorted(set(not_applicable) - wanted)
    assert not stale_docs, f"not-applicable rows that no dashboard queries: {stale_docs}"
    # Every dashboard series served is in the docs' table (by family), and the table says what
    # the server does: the type and the label names of every sample.
    families = {m: f for f in documented for m in (f, f"{f}_bucket", f"{f}_total")}
    undocumented = sorted(m for m in wanted & served if m not in families)
    assert not undocumented, f"dashboard series served but missing from the docs' table: {undocumented}"
    for family, (kind, labels) in documented.items():
        exposed_name = family.removesuffix("_total") if family.startswith("process_") else family
        assert exposed.types.get(exposed_name) == kind, f"{family}: docs say {kind}, served {exposed.types.get(family)}"
        samples = exposed.family_samples(exposed_name)
        assert samples, f"{family}: documented but no sample served"
        for sample_labels, _ in samples:
            assert set(sample_labels) - {"le"} == labels, f"{family}: labels {sorted(sample_labels)}, docs {labels}"


async def _rejects_counted(port: int) -> Exposition | None:
    exposed = await scrape(port)
    done = all(exposed.value("pilot_total_xds_rejects", type=s) == 1 for s in SHORT.values())
    return exposed if done and exposed.value("pilot_xds_expired_nonce", type="cds") == 1 else None


async def _pushed(port: int) -> Exposition | None:
    exposed = await scrape(port)
    updated = exposed.value("pilot_k8s_cfg_events", type="VirtualService", event="update") == 1
    return exposed if updated and exposed.value("pilot_push_triggers", type="config") == 1 else None
