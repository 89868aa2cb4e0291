"""Config sources: where the control plane's resources come from.

A source turns some outside store (today: a directory of YAML files) into a sequence of
``SourceUpdate``s: a complete immutable ``ConfigSnapshot``, the exact set of keys that changed,
and every current error.  Validation is always ``istiod_lite.model.parse_object``, so every source
accepts and rejects exactly the same documents.
"""

from istiod_lite.sources.yamldir import DirectorySource, SourceUpdate
from istiod_lite.sources.yamlfile import ParsedFile, parse_file

__all__ = ["DirectorySource", "ParsedFile", "SourceUpdate", "parse_file"]
