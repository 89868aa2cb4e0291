"""``route_warnings``: routing config a waypoint cannot honour is reported, clean config is not."""

from __future__ import annotations

import yaml

from istiod_lite.model import ConfigSnapshot, parse_object
from istiod_lite.translator.config_warnings import route_warnings

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /a}}, {sourceLabels: {app: web}}]
    route: [{destination: {host: echo}}]
  - match: [{uri: {prefix: /r}}]
    redirect: {uri: /x, redirectCode: 304}
  - delegate: {name: child, namespace: app}
  tcp:
  - match: [{sourceNamespace: client}]
    route: [{destination: {host: echo}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress-only, namespace: app}
spec:
  hosts: [echo]
  gateways: [app/ingress]
  http:
  - match: [{sourceLabels: {app: web}}]
    route: [{destination: {host: echo}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: app}
spec:
  host: echo
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: echo-cert}
    loadBalancer: {localityLbSetting: {failover: [{from: eu, to: us}]}}
  subsets:
  - name: v1
    labels: {v: '1'}
    trafficPolicy: {tunnel: {targetHost: proxy.example.com, targetPort: 8080}}
"""


def test_every_ignored_piece_is_reported_once() -> None:
    snap = ConfigSnapshot.build([parse_object(d) for d in yaml.safe_load_all(CONFIG)], 1)
    warnings = route_warnings(snap)
    text = "\n".join(warnings)
    assert "VirtualService app/vs: http[0].match[1] uses sourceLabels" in text
    assert "http[1].redirect.redirectCode 304" in text
    assert "http[2] delegates" in text
    assert "tcp[0].match[0] uses sourceLabels/sourceNamespace" in text
    assert "DestinationRule app/dr: trafficPolicy.tls.credentialName" in text
    assert "trafficPolicy.loadBalancer.localityLbSetting failover needs outlierDetection" in text
    assert "subsets[0].trafficPolicy.tunnel" in text
    assert "ingress-only" not in text  # not bound to the mesh: never reaches a waypoint
    assert len(warnings) == 7
    assert warnings == sorted(warnings)
    assert route_warnings(snap) == warnings


def test_clean_config_has_no_warnings() -> None:
    assert route_warnings(ConfigSnapshot.build([], 1)) == []
