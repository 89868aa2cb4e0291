"""``gc_paused``: the collector is off inside, back to its previous state after, even on error."""

from __future__ import annotations

import gc

import pytest

from istiod_lite.gcpause import gc_paused


def test_pauses_and_restores_even_when_the_body_raises() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested: the inner one leaves it off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_never_turns_on_a_collector_that_was_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
