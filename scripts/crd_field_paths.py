"""Print every field path of CRD ``spec`` schemas, one ``group/Kind path`` a line, for
``tests/unit/data/crd_field_paths.txt`` (the list ``tests/unit/test_crd_fields.py`` checks the model against).

Usage: ``python scripts/crd_field_paths.py [--version v1] CRD.yaml... > paths.txt``

Paths use ``.`` between fields, ``[]`` for a list's items and ``{}`` for a map's values (only where
the values are objects or lists: a map of strings ends at the map).  For each CRD the ``--version``
(default ``v1``) schema is read, else the first version listed.  Every kind found is printed as a
``kind`` line too, so the test also knows which kinds the CRDs define.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml


def walk(schema: dict[str, Any], path: str, out: set[str]) -> None:
    """Collect the paths under ``schema`` (an OpenAPI v3 schema) into ``out``."""
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        out.add(here)
        walk(sub, here, out)
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        walk(schema["items"], path + "[]", out)
    values = schema.get("additionalProperties")
    if isinstance(values, dict) and ("properties" in values or values.get("type") == "array"):
        walk(values, path + "{}", out)
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in schema.get(key) or ():
            walk(sub, path, out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", default="v1")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    for name in args.files:
        with open(name, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            kind, group = doc["spec"]["names"]["kind"], doc["spec"]["group"]
            versions = {v["name"]: v for v in doc["spec"]["versions"]}
            version = versions.get(args.version) or doc["spec"]["versions"][0]
            print(f"kind {group} {kind} {version['name']}")
            spec = version["schema"]["openAPIV3Schema"].get("properties", {}).get("spec")
            paths: set[str] = set()
            if spec:
                walk(spec, "", paths)
            for p in sorted(paths):
                print(f"{group}/{kind} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
