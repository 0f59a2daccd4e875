"""Machine.pause/resume's clock hold, with fake vCPUs (pure logic: no VM,
no threads): the counters read at the pause are written back on resume."""
from pyvmm.arm64 import regs
from pyvmm.machine import Machine, MachineConfig

CNTVCT, CNTPCT = regs.sysreg_named("CNTVCT_EL0"), regs.sysreg_named("CNTPCT_EL0")


class FakeVcpu:
    """Counters that run on by themselves, and a log of writes."""
    run_struct = None

    def __init__(self):
        self.now = 1000
        self.writes = []

    def get_reg(self, reg):
        return {CNTVCT: self.now, CNTPCT: self.now + 5}[reg]

    def set_reg(self, reg, value):
        self.writes.append((reg, value))


def _machine(hide=True):
    m = Machine(None, MachineConfig(), None, lambda data: None)
    m.vcpus = [FakeVcpu(), FakeVcpu()]
    m.hide_pauses = hide
    return m


def test_resume_puts_the_counters_back_where_the_pause_found_them():
    m = _machine()
    m.request_pause()
    m.freeze_clock()
    for v in m.vcpus:
        v.now += 10_000  # time passes while paused
    m.resume()
    assert not m.paused
    for v in m.vcpus:
        assert v.writes == [(CNTVCT, 1000), (CNTPCT, 1005)]
    m.request_pause()  # a second pause reads the counters again
    m.freeze_clock()
    m.resume()
    assert m.vcpus[0].writes[-2:] == [(CNTVCT, 11_000), (CNTPCT, 11_005)]


def test_keep_lets_the_counters_run_through_a_pause():
    m = _machine(hide=False)
    m.request_pause()
    m.freeze_clock()
    m.resume()
    assert all(v.writes == [] for v in m.vcpus)
