"""Config problems as Prometheus gauges on the control plane: rejected resources by kind, accepted
config not applied as written by category, and one series per authorization resource that fails
closed — set on every install, and removed when fixed."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.controlplane import control_plane
from tests.support.wait import wait_until

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
BROKEN_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}, weight: -1}]}]
"""


async def test_errors_and_fail_closed_policies_are_gauges(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    shutil.copytree(GOLDEN / "authz-failclosed-deny" / "input", cfg)  # a DENY whose regex is too big
    (cfg / "zz-broken.yaml").write_text(BROKEN_VS)
    async with control_plane(cfg) as cp:
        registry = cp.ads.metrics.registry

        def value(metric: str, **labels: str) -> float | None:
            return registry.get_sample_value(metric, labels)

        await wait_until(lambda: value("istiod_lite_config_errors", kind="VirtualService") == 1, timeout=10,
                         message="the rejected VirtualService counted")
        assert value("istiod_lite_authorization_problems", kind="AuthorizationPolicy", namespace="shop",
                     name="deny") == 1
        assert value("istiod_lite_config_warnings", category="authorization") == 1
        assert value("istiod_lite_config_warnings", category="binding") == 0

        # Fixed: the series go away (not left at their last value).
        (cfg / "zz-broken.yaml").unlink()
        for f in cfg.iterdir():
            f.write_text(f.read_text().replace('"*nnnn', '"nnnn'))
        await wait_until(lambda: value("istiod_lite_config_errors", kind="VirtualService") is None, timeout=10,
                         message="the error series removed")
        await wait_until(lambda: value("istiod_lite_authorization_problems", kind="AuthorizationPolicy",
                                       namespace="shop", name="deny") is None, timeout=10,
                         message="the policy's series removed")
        assert value("istiod_lite_config_warnings", category="authorization") == 0
