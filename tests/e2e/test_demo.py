"""README command (1): ``istiod-lite demo`` on the embedded default shows the canary through a real waypoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_the_80_20_canary() -> None:
    out = subprocess.run([sys.executable, "-m", "istiod_lite.cli.main", "--log-level", "WARNING", "demo",
                          "--requests", "400"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "bookinfo/reviews (127.10.0.1:9080) via waypoint bookinfo/waypoint, 400 requests:" in text
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(reviews-v\d\S*)\s+(\d+)\s", text, re.MULTILINE)}
    assert sum(counts.values()) == 400, text
    v2 = next(n for name, n in counts.items() if name.startswith("reviews-v2"))
    # Binomial(400, 0.2): sd 8; +-5 sd.
    assert abs(v2 - 80) <= 40, text
    assert re.search(r"ratings-v1\S*\s+400\s+100\.0%", text), text
