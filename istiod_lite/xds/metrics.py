"""Prometheus metrics with Istio's names and meanings (pilot/pkg/xds/monitoring.go).

One ``XdsMetrics`` per server, on its own registry, so several servers (tests, benchmarks) can
live in one process without sharing counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from istiod_lite.xds.typeurls import SHORT_NAMES


def type_label(type_url: str) -> str:
    """The ``type`` label of a type URL: istiod's short names for the types served here, ``other``
    for any other.  Clients choose the type URLs they send; a label value per invented URL would
    grow the registry (and every scrape) without bound."""
    name = SHORT_NAMES.get(type_url)
    return name.lower() if name is not None else "other"

_TIME_BUCKETS = (0.01, 0.1, 0.5, 1, 3, 5, 10, 20, 30)
_SEND_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)

#: Told of every NACK: the type URL, the client's node id and the ``error_detail`` status code.
RejectListener = Callable[[str, str, int], None]
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SIZE_BUCKETS = (1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000)


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        #: Response bytes written since start (read by the memory trimmer).
        self.bytes_sent = 0
        r = self.registry
        self.connected = Gauge("pilot_xds", "Number of endpoints connected to this pilot using XDS.",
                               ["version"], registry=r)
        self.pushes = Counter("pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.",
                              ["type"], registry=r)
        self.push_time = Histogram("pilot_xds_push_time", "Total time in seconds Pilot takes to push lds, rds, "
                                   "cds and eds.", ["type"], buckets=_TIME_BUCKETS, registry=r)
        self.convergence = Histogram("pilot_proxy_convergence_time", "Delay in seconds between config change and "
                                     "a proxy receiving all required configuration.", buckets=_TIME_BUCKETS,
                                     registry=r)
        self.rejects = Counter("pilot_total_xds_rejects", "Total number of XDS responses from pilot rejected by "
                               "proxy.", ["type"], registry=r)
        self.write_timeouts = Counter("pilot_xds_write_timeout", "Pilot XDS response write timeouts.", registry=r)
        self.send_time = Histogram("pilot_xds_send_time", "Total time in seconds Pilot takes to send generated "
                                   "configuration.", buckets=_SEND_BUCKETS, registry=r)
        #: Called on every NACK (the control plane keeps Istio's older per-type reject series).
        self.reject_listeners: list[RejectListener] = []
        self.expired_nonce = Counter("pilot_xds_expired_nonce", "Total number of XDS requests with an expired "
                                     "nonce.", ["type"], registry=r)
        self.debounce_time = Histogram("pilot_debounce_time", "Delay in seconds between the first config enters "
                                       "debouncing and the merged push request is pushed into the push queue.",
                                       buckets=_TIME_BUCKETS, registry=r)
        self.push_triggers = Counter("pilot_push_triggers", "Total number of times a push was triggered, labeled "
                                     "by reason for the push.", ["type"], registry=r)
        self.config_size = Histogram("pilot_xds_config_size_bytes", "Distribution of configuration sizes pushed to "
                                     "clients", ["type"], buckets=_SIZE_BUCKETS, registry=r)
        self.connected.labels(version="").set(0)
        # istiod-lite's own (istiod has no such metrics): event-loop lag and admission.
        self.loop_lag = Histogram("istiod_lite_event_loop_lag_seconds", "How late the event loop ran a periodic "
                                  "timer (sampled every 20 ms).", buckets=_LAG_BUCKETS, registry=r)
        self.admission_refused = Counter("istiod_lite_xds_admission_refused", "New xDS streams refused with "
                                         "RESOURCE_EXHAUSTED, by reason (rate: fixed rate; load: syncing bound or "
                                         "loop lag).", ["reason"], registry=r)
        self.syncing = Gauge("istiod_lite_xds_syncing_streams", "Admitted xDS streams still in their initial sync.",
                             registry=r)
        self.admission_waiting = Gauge("istiod_lite_xds_admission_waiting_streams", "New xDS streams waiting "
                                       "for admission.", registry=r)

    def track_admission(self, syncing: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.syncing.set_function(syncing)
        self.admission_waiting.set_function(waiting)

    def sent(self, type_url: str, size: int, seconds: float, write_seconds: float = 0.0) -> None:
        """A response written: ``seconds`` from the start of its build to the end of its write,
        ``write_seconds`` the write alone (istiod's send time)."""
        t = type_label(type_url)
        self.bytes_sent += size
        self.pushes.labels(type=t).inc()
        self.push_time.labels(type=t).observe(seconds)
        self.send_time.observe(write_seconds)
        self.config_size.labels(type=t).observe(size)

    def rejected(self, type_url: str, node_id: str = "", code: int = 0) -> None:
        self.rejects.labels(type=type_label(type_url)).inc()
        for listener in self.reject_listeners:
            listener(type_url, node_id, code)

    def stale_nonce(self, type_url: str) -> None:
        self.expired_nonce.labels(type=type_label(type_url)).inc()
