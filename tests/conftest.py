"""Shared fixtures. Keep this thin: the logic lives in ``tests/support/``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

import istiod_lite  # noqa: F401  (first: sets GRPC_ENABLE_FORK_SUPPORT before grpc is imported)
from tests.support.backends import BackendsFactory
from tests.support.envoy import EnvoyFactory


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Store each phase's report on the item (``item.rep_setup`` / ``rep_call`` / ``rep_teardown``)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _test_failed(request: pytest.FixtureRequest) -> bool:
    """True if the test's setup or call phase failed (usable from fixture finalizers)."""
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
async def backends_factory(request: pytest.FixtureRequest) -> AsyncIterator[BackendsFactory]:
    """``group = await backends_factory(n, **behaviour)``: real HTTP pods on fresh loopback addresses
    (their request logs are summarised if the test failed)."""
    factory = BackendsFactory()
    try:
        yield factory
    finally:
        await factory.aclose()
        if _test_failed(request) and factory.groups:
            print("\n" + factory.report())


@pytest.fixture
async def envoy_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EnvoyFactory]:
    """``envoy = await envoy_factory(bootstrap, **kw)``: a started real Envoy; all stopped at teardown, and
    their log tails printed if the test failed."""
    factory = EnvoyFactory(base_dir=tmp_path / "envoy")
    try:
        yield factory
    finally:
        await factory.aclose()
        if _test_failed(request) and factory.instances:
            print("\n" + factory.log_report())
