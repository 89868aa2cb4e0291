"""Envoy resources as Envoy's own JSON (protobuf JSON with ``@type``), deterministically."""

from __future__ import annotations

import json
from typing import Any

import yaml
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from istiod_lite.translator.core.output import SECTIONS, EnvoyResources, as_message


def message_json(msg: Message) -> dict[str, Any]:
    packed = any_pb2.Any()
    packed.Pack(msg)
    out: dict[str, Any] = json_format.MessageToDict(packed, preserving_proto_field_name=True)
    return out


def resources_dict(res: EnvoyResources) -> dict[str, list[dict[str, Any]]]:
    """Each type's messages by name, under its ``EnvoyResources`` attribute name (``listeners``, ...);
    a type that is not Envoy's under its type URL."""
    return {SECTIONS.get(type_url, type_url): [message_json(as_message(m)) for _, m in sorted(named.items())]
            for type_url, named in res.by_type.items()}


def render(res: EnvoyResources, fmt: str = "json") -> str:
    data = resources_dict(res)
    if fmt == "yaml":
        plain = json.loads(json.dumps(data))  # protobuf's JSON uses OrderedDict; YAML wants plain dicts
        return yaml.safe_dump(plain, sort_keys=True, default_flow_style=False)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
