"""Turn the translator's ``EnvoyResources`` into the xDS layer's ``ResourceSnapshot``."""

from __future__ import annotations

from istiod_lite.translator.output import EnvoyResources
from istiod_lite.xds import typeurls
from istiod_lite.xds.resources import ResourceSnapshot


def to_resource_snapshot(res: EnvoyResources) -> ResourceSnapshot:
    return ResourceSnapshot.from_messages(
        {
            typeurls.LISTENER: res.listeners,
            typeurls.ROUTE: res.routes,
            typeurls.CLUSTER: res.clusters,
            typeurls.ENDPOINT: res.endpoints,
            typeurls.SECRET: res.secrets,
        }
    )
