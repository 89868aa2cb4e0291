"""Istio's standard metrics for a waypoint on upstream Envoy: the access-log service Envoy streams to
(``collector``), the labels of an entry (``labels``), the aggregation (``store``) and the merged
Prometheus endpoint (``scrape``).  Design and label sources: docs/observability.md."""
