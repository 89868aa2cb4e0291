"""Config snapshots the way the sources build them, for translator memo tests: a change replaces one
object and keeps every other object (and every unchanged kind's mapping) as it was."""

from __future__ import annotations

from typing import Any

import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from istiod_lite.model import ConfigSnapshot, ResourceKey, parse_object
from istiod_lite.model.base import Resource
from istiod_lite.translator.core.output import EnvoyResources


def load_resources(text: str) -> list[Resource]:
    return [parse_object(d) for d in yaml.safe_load_all(text)]


def replaced(previous: ConfigSnapshot, base: list[Resource], new: Resource, rev: int,
             delete: bool = False) -> tuple[ConfigSnapshot, list[Resource]]:
    """The next snapshot with ``new`` in place of the object with its key (added if there is none;
    removed instead with ``delete``), and the new object list."""
    key = ResourceKey.of(new)
    objs = [r for r in base if ResourceKey.of(r) != key]
    if not delete:
        objs = [new if ResourceKey.of(r) == key else r for r in base]
        if all(ResourceKey.of(r) != key for r in base):
            objs.append(new)
    return ConfigSnapshot.build(objs, rev, previous=previous, changed=[key]), objs


def same_output(a: EnvoyResources, b: EnvoyResources) -> bool:
    """Byte-identical listeners, routes, clusters and endpoints."""
    kinds = ("listeners", "routes", "clusters", "endpoints")
    return all({k: v.SerializeToString(deterministic=True) for k, v in getattr(a, kind).items()}
               == {k: v.SerializeToString(deterministic=True) for k, v in getattr(b, kind).items()}
               for kind in kinds)


def chain_routes(out: EnvoyResources, chain: str) -> list[Any]:
    """The routes an HTTP chain of ``main_internal`` serves: its connection manager names a route
    configuration (RDS), which must be among ``out.routes``."""
    for fc in out.listeners["main_internal"].filter_chains:
        if fc.name == chain:
            hcm = hcm_pb2.HttpConnectionManager()
            fc.filters[-1].typed_config.Unpack(hcm)
            return list(out.routes[hcm.rds.route_config_name].virtual_hosts[0].routes)
    raise AssertionError(f"no chain {chain}")
