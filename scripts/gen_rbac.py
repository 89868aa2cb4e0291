"""Write ``deploy/rbac.yaml`` from the kind declarations, or check it is current.

    python scripts/gen_rbac.py           # rewrite deploy/rbac.yaml
    python scripts/gen_rbac.py --check   # exit 1 (and say so) if deploy/rbac.yaml differs

Why a script: the manifest is static YAML an operator applies (and reviews) as is, but its rules
follow the code: every declared kind is watched and so needs ``list``/``watch`` (see
``istiod_lite/controlplane/rbac.py``).  tests/unit/test_kind_declarations.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from istiod_lite.controlplane.rbac import render_rbac

RBAC = Path(__file__).resolve().parents[1] / "deploy" / "rbac.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if deploy/rbac.yaml is not current")
    args = parser.parse_args(argv)
    want = render_rbac()
    if args.check:
        have = RBAC.read_text() if RBAC.exists() else ""
        if have != want:
            print(f"{RBAC} is stale: run python scripts/gen_rbac.py", file=sys.stderr)
            return 1
        return 0
    RBAC.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
