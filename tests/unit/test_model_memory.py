"""Frozen config models share one fields-set object per combination (memory at scale), invisibly."""

from __future__ import annotations

from istiod_lite.model import parse_object
from istiod_lite.model.core import Pod, Service


def _service(name: str, **spec: object) -> Service:
    obj = parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
                        "spec": {"ports": [{"port": 80}], **spec}})
    assert isinstance(obj, Service)
    return obj


def test_equal_field_combinations_share_one_set() -> None:
    a, b = _service("a"), _service("b")
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.metadata.__pydantic_fields_set__ is b.metadata.__pydantic_fields_set__
    assert a.model_fields_set == {"api_version", "kind", "metadata", "spec"}
    c = _service("c", clusterIP="10.0.0.1")
    assert c.spec.model_fields_set == {"ports", "cluster_ip"} != a.spec.model_fields_set


def test_model_copy_with_update_leaves_the_shared_set_alone() -> None:
    a, b = _service("a"), _service("b")
    before = set(b.spec.model_fields_set)
    copied = a.spec.model_copy(update={"cluster_ip": "10.0.0.9"})
    assert "cluster_ip" in copied.model_fields_set
    assert b.spec.model_fields_set == before == a.spec.model_fields_set


def test_dump_still_sees_only_what_was_set() -> None:
    pod = parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
                        "status": {"podIP": "10.1.1.1"}})
    assert isinstance(pod, Pod)
    assert pod.status.model_dump(exclude_unset=True, by_alias=True) == {"podIP": "10.1.1.1"}


def test_a_model_that_allows_assignment_keeps_its_own_set() -> None:
    from pydantic import ConfigDict

    from istiod_lite.model.base import IstioModel

    class Mutable(IstioModel):
        model_config = ConfigDict(frozen=False)
        a: int = 0
        b: int = 0

    x, y = Mutable(a=1), Mutable(a=2)
    assert x.__pydantic_fields_set__ is not y.__pydantic_fields_set__
    x.b = 3
    assert y.model_fields_set == {"a"}
