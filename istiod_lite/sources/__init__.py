"""Config sources: where the control plane's resources come from.

A source turns some outside store (a directory of YAML files, a Kubernetes cluster, or both merged) into a sequence of
``SourceUpdate``s: a complete immutable ``ConfigSnapshot``, the exact set of keys that changed,
and every current error.  Validation is always ``istiod_lite.model.parse_object``, so every source
accepts and rejects exactly the same documents.

``contract`` holds the ``Source`` protocol and ``SourceUpdate``; ``publisher`` the publish step every
source shares (docs/architecture.md, "How to add a config source").
"""

from istiod_lite.sources.contract import Source, SourceUpdate, UpdateHandler
from istiod_lite.sources.kube import KubeSource, KubeSourceOptions
from istiod_lite.sources.merge import MergedSource
from istiod_lite.sources.publisher import Publisher
from istiod_lite.sources.yamldir import DirectorySource
from istiod_lite.sources.yamlfile import ParsedFile, parse_file

__all__ = ["DirectorySource", "KubeSource", "KubeSourceOptions", "MergedSource", "ParsedFile", "Publisher", "Source",
           "SourceUpdate", "UpdateHandler", "parse_file"]
