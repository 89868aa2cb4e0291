"""README command (1): ``istiod-lite demo`` on the embedded default shows the canary through a real
waypoint, explains it, and prints its story only (the log lines go to a log directory it names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_the_80_20_canary_and_explains_it() -> None:
    # The default log level (INFO): every component logs, none of it may reach the terminal.
    out = subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", "demo", "--requests", "400"],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    logs = re.search(r"^logs: (\S+) ", text, re.MULTILINE)
    assert logs, text
    log_dir = Path(logs.group(1))
    try:
        assert out.stderr == "", out.stderr[-3000:]
        assert not re.search(r"\b(INFO|WARNING|DEBUG)\b", text), text
        log_text = (log_dir / "istiod-lite.log").read_text()
        assert " INFO istiod_lite.controlplane" in log_text and " INFO istiod_lite.agent" in log_text
        assert list(log_dir.glob("*.envoy.log"))

        assert "bookinfo/reviews (127.10.0.1:9080) via waypoint bookinfo/waypoint, 400 requests:" in text
        counts = {m.group(1): int(m.group(2))
                  for m in re.finditer(r"^\s+(reviews-v\d\S*)\s+(\d+)\s", text, re.MULTILINE)}
        assert sum(counts.values()) == 400, text
        v2 = next(n for name, n in counts.items() if name.startswith("reviews-v2"))
        # Binomial(400, 0.2): sd 8; +-5 sd.
        assert abs(v2 - 80) <= 40, text
        assert re.search(r"ratings-v1\S*\s+400\s+100\.0%", text), text

        # It ends by explaining the canary it just showed, from the same config.
        why = text[text.index("why: istiod-lite explain service bookinfo/reviews --config "):]
        assert "waypoint: bookinfo/waypoint" in why
        assert "Namespace bookinfo has label istio.io/use-waypoint=waypoint" in why
        assert re.search(r"1\. VirtualService bookinfo/reviews: .*80% -> subset v1, 20% -> subset v2", why), why
        assert "2. DestinationRule bookinfo/reviews" in why
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
