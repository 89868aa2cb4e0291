"""Small protobuf helpers shared by the translator modules."""

from __future__ import annotations

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message


def packed(msg: Message) -> any_pb2.Any:
    """``msg`` in an ``Any`` (its type URL is ``type.googleapis.com/<full name>``)."""
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def string_value(text: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=text)
