"""Answers to "why is my route or policy (not) applied?", computed from the translator's own decisions.

One module per question, each a pure function of a ``ConfigSnapshot`` (and the mesh config), so the
directory and the cluster give the same answers and golden files can pin them:

* ``service``  - ``explain_service``: which waypoint serves a service and why, and every routing,
  traffic-policy, security and telemetry object that applies to it (in order) or names it but does not;
* ``analyze``  - ``analyze``: Istio-style analysis messages (Istio's codes and levels where Istio has
  one, ``ISTL`` codes for what Istio misses);
* ``render``   - human text for both;
* ``request``  - ``explain request``: what a waypoint does with one HTTP request, evaluated from the
  generated Envoy configuration (``envoy_eval``), not from the Istio objects (docs/explain-request.md).

The answers are read from the translator's public decisions (``binding_decision``,
``service_routes``, ``destination_rule``, the policy attach index, ``applicable_telemetries``) and its
diagnostics (``diagnose``): nothing here decides anew what the waypoint will do.
"""

from istiod_lite.explain.analyze import AnalysisMessage, analyze
from istiod_lite.explain.model import Entry, ServiceExplanation, WaypointChoice
from istiod_lite.explain.service import TargetNotFound, explain_service

__all__ = ["AnalysisMessage", "Entry", "ServiceExplanation", "TargetNotFound", "WaypointChoice", "analyze",
           "explain_service"]
