"""pyvmm/migration/gc_hold.py: the cyclic collector off while a hold is
taken, holds nesting (a source and a destination in one process), and the
collector restored as the first hold found it."""
import gc

import pytest

from pyvmm.migration.gc_hold import CollectorHold


@pytest.fixture(autouse=True)
def _collector_as_it_was():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_a_hold_disables_until_released_twice_is_once():
    gc.enable()
    h = CollectorHold()
    assert not gc.isenabled()
    h.release()
    assert gc.isenabled()
    h.release()
    assert gc.isenabled()


@pytest.mark.parametrize("first_released", [True, False])
def test_holds_nest_and_the_last_release_restores(first_released):
    gc.enable()
    a, b = CollectorHold(), CollectorHold()
    (a if first_released else b).release()
    assert not gc.isenabled()
    (b if first_released else a).release()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    h = CollectorHold()
    h.release()
    assert not gc.isenabled()
