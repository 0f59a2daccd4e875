"""The sending side's logic on any host (pyvmm/migration/source.py): a fake
machine (real GuestMemory, the fake dirty-log VM of
tests/support/fake_dirty_vm.py, no vCPUs) migrates to a scripted
destination over a real unix socket. Checks that the destination ends up
with the source's memory, guest writes during pre-copy included, and that
every failure before GO resumes the guest with dirty logging off. Real
migrations run in the test machine (tests/kvm/test_migrate.py)."""
import mmap
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.machine import ExitStatus, Machine
from pyvmm.memory import GuestMemory
from pyvmm.migration import source, stream, transport
from pyvmm.snapshot import format as fmt
from support.fake_dirty_vm import FakeDirtyVm

PAGE = mmap.PAGESIZE
PAGES = 256


class FakeSourceMachine:
    """A running machine as source.migrate sees it (a fake for pure logic)."""

    transports = Machine.transports

    def __init__(self):
        self.mem = GuestMemory()
        self.mem.add(0x4000_0000, PAGES * PAGE)
        for i in range(0, PAGES, 3):
            self.mem.write(0x4000_0000 + i * PAGE, bytes([i % 251 + 1]) * 100)
        self.vm = FakeDirtyVm()
        self.virtio, self.pci_virtio, self.pci = [], [], None  # as Machine's (no PCI device)
        self.config = types.SimpleNamespace(fss=[])
        self.paused = False
        self.owned = []  # as Machine.owned: source.migrate drops a snapshot chain's dirty tracker from it
        self.io_lock = threading.RLock()
        self.events = []

    def pause(self, timeout=30.0):
        self.paused = True
        self.events.append("pause")

    def resume(self):
        self.paused = False
        self.events.append("resume")

    def finish(self, status, reason):
        self.events.append(("finish", status))

    def guest_write(self, page, data):
        self.mem.regions[0].mm[page * PAGE:page * PAGE + len(data)] = data
        self.vm.guest_writes(0, page)


@pytest.fixture
def fake_take(monkeypatch):
    def take(m, progress=None, memory=True, cache=None, sealed=True, timing=None, flushed=False):
        assert m.paused and not memory
        return fmt.Snapshot({"kind": "fake", "at": len(m.events)})
    monkeypatch.setattr(source.machine_snapshot, "take", take)


class Destination(threading.Thread):
    """A scripted destination: ``script(frame_type_name, dest)`` returns
    what to do with each frame (a frame to answer, "close", or None)."""

    def __init__(self, path, m, script):
        super().__init__(daemon=True)
        self.listener = transport.Listener(transport.parse(f"unix:{path}", listening=True))
        self.m, self.script = m, script
        self.memory = bytearray(PAGES * PAGE)
        self.frames = []
        self.error = None

    def run(self):
        conn = self.listener.accept(10, 10)
        try:
            page = stream.parse_preamble(conn.recv_exact(stream.PREAMBLE_SIZE))
            while True:
                try:
                    f = stream.read_frame(conn.recv_exact, page)
                except transport.PeerError:
                    return
                self.frames.append(f.name)
                if f.type == stream.PAGES:
                    slot, idx, data = stream.decode_pages(f.payload, {0: PAGES}, page)
                    for k, i in enumerate(idx):
                        self.memory[i * page:(i + 1) * page] = data[k * page:(k + 1) * page]
                action = self.script(f.name, self)
                if action == "close":
                    return
                if action is not None:
                    conn.send(action)
        except Exception as e:  # noqa: BLE001 -- reported by the test
            self.error = e
        finally:
            conn.close()


def happy(name, d):
    if name == "state-check":
        return stream.frame(stream.ACCEPT)
    if name == "state":
        return stream.frame(stream.READY)
    if name == "go":
        return stream.frame(stream.RUNNING)
    return None


def test_a_migration_copies_memory_and_guest_writes_made_meanwhile(tmp_path, fake_take):
    m = FakeSourceMachine()
    d = Destination(tmp_path / "in.sock", m, happy)
    d.start()
    seen, wrote = [], []

    def progress(info):
        # The guest writes while round 1 is sent (the progress call comes from the migrating thread).
        if info.get("round") == 1 and "phase" not in info and not wrote:
            wrote.append(True)
            m.guest_write(0, b"written while copying")  # page 0 is sent in round 1: now dirty
            m.guest_write(200, b"a page that was zero")
            m.mem.write(0x4000_0000 + 7 * PAGE, b"a device model wrote this")
        seen.append(info)
    report = source.migrate(m, f"unix:{tmp_path}/in.sock", max_downtime_ms=1e-6, progress=progress)
    d.join(10)
    assert d.error is None
    assert bytes(d.memory) == bytes(m.mem.regions[0].mm)
    assert d.frames[0] == "state-check" and d.frames[-2:] == ["state", "go"]
    assert report.rounds >= 3 and report.pages >= PAGES // 3 + 2
    assert m.events == ["pause", "resume", "pause"]  # the short check pause, then the final one; no resume
    assert m.paused and ("finish", ExitStatus.POWEROFF) not in m.events  # the caller ends the VM
    assert any("phase" in p for p in seen)
    assert report.dirty_log == "get+clear"
    assert 0 < report.sent_ms <= report.downtime_ms  # everything sent before the destination ran it
    assert report.downtime_parts["last_pages"] >= 0


def test_the_its_tables_flushed_in_the_pause_are_in_the_pages_sent(tmp_path, fake_take):
    """A machine with PCI devices: in the final pause KVM writes its ITS
    tables into guest RAM (KVM_DEV_ARM_ITS_SAVE_TABLES), before the last
    dirty-log look, so the destination gets those pages."""
    m = FakeSourceMachine()
    m.gic = types.SimpleNamespace(device="vgic-v3 fd")

    class Pci:  # the machine's PciDevices (a fake: its flush writes a page as KVM would)
        def flush(self, gic_device):
            assert m.paused and gic_device == "vgic-v3 fd"
            m.events.append("its flush")
            m.guest_write(100, b"ITS device table")
    m.pci = Pci()
    d = Destination(tmp_path / "in.sock", m, happy)
    d.start()
    source.migrate(m, f"unix:{tmp_path}/in.sock", max_downtime_ms=1e-6)
    d.join(10)
    assert d.error is None
    assert m.events == ["pause", "resume", "pause", "its flush"]
    assert bytes(d.memory[100 * PAGE:100 * PAGE + 16]) == b"ITS device table"
    assert bytes(d.memory) == bytes(m.mem.regions[0].mm)


def test_the_rest_goes_before_the_pause_which_sends_only_later_writes(tmp_path, fake_take, monkeypatch):
    # Pre-copy stops with a small rest (pages 0 and 200, written in round 1):
    # it is sent while the guest still runs; a write made meanwhile (page 5)
    # is all the pause sends.
    m = FakeSourceMachine()
    sent = []  # (pages, paused) of each send
    send_pages = source._Sender.send_pages

    def recording(self, slot, indices):
        sent.append((list(indices), m.paused))
        if indices == [0, 200] and not m.paused:
            m.guest_write(5, b"written while the rest was sent")
        send_pages(self, slot, indices)
    monkeypatch.setattr(source._Sender, "send_pages", recording)

    wrote = []

    def progress(info):
        if info.get("round") == 1 and "phase" not in info and not wrote:
            wrote.append(True)
            m.guest_write(0, b"written in round 1")
            m.guest_write(200, b"a zero page written in round 1")
    d = Destination(tmp_path / "in.sock", m, happy)
    d.start()
    report = source.migrate(m, f"unix:{tmp_path}/in.sock", max_downtime_ms=1e6, progress=progress)
    d.join(10)
    assert d.error is None
    assert bytes(d.memory) == bytes(m.mem.regions[0].mm)
    assert ([0, 200], False) in sent
    assert [pages for pages, paused in sent if paused] == [[5]]
    assert report.downtime_parts["last_pages"] == 1


def test_pages_written_after_the_zero_page_search_ahead_still_arrive(tmp_path, fake_take, monkeypatch):
    # Round 1's search for non-zero pages runs while the destination builds
    # (before ACCEPT). A page it found zero and that is written before the
    # answer, and one it found non-zero and that is zeroed then, must reach
    # the destination as they are: through the dirty log, on before the search.
    searched = threading.Event()
    search = source.nonzero_chunks

    def nonzero_chunks(regions, page):
        yield from search(regions, page)
        searched.set()
    monkeypatch.setattr(source, "nonzero_chunks", nonzero_chunks)
    m = FakeSourceMachine()

    def script(name, d):
        if name == "state-check":
            assert searched.wait(10)  # the source has judged every page: the guest writes now
            m.guest_write(200, b"a page the search found zero")
            m.guest_write(3, bytes(100))  # page 3 held data: all zero now
        return happy(name, d)
    d = Destination(tmp_path / "in.sock", m, script)
    d.start()
    report = source.migrate(m, f"unix:{tmp_path}/in.sock", max_downtime_ms=1e-6)
    d.join(10)
    assert d.error is None
    assert report.phases["scan_ahead_pages"] == PAGES
    assert d.memory[200 * PAGE:200 * PAGE + 28] == b"a page the search found zero"
    assert d.memory[3 * PAGE:4 * PAGE] == bytes(PAGE)
    assert bytes(d.memory) == bytes(m.mem.regions[0].mm)


def test_the_zero_page_search_finds_exactly_the_non_zero_pages():
    mem = GuestMemory()
    mem.add(0x4000_0000, 600 * PAGE)  # runs of 256, 256 and 88 pages
    r = mem.regions[0]
    for i in (0, 5, 255, 300, 599):
        r.mm[i * PAGE + PAGE - 1] = b"\x01"  # the last byte only
    r.mm[256 * PAGE:512 * PAGE] = b"\x07" * (256 * PAGE)  # a run with no zero page at all
    r.mm[400 * PAGE:400 * PAGE + PAGE // 2] = bytes(PAGE // 2)  # half a page of zeros at a page's start...
    r.mm[399 * PAGE + PAGE // 2:399 * PAGE + PAGE] = bytes(PAGE // 2)  # ...and half at the previous one's end
    runs = [(first, n, nz) for _r, first, n, nz in source.nonzero_chunks(mem.regions, PAGE)]
    assert runs[0] == (0, 256, [0, 5, 255])
    assert runs[1] == (256, 256, list(range(256)))  # the zero run across pages 399/400 is no zero page
    assert runs[2] == (512, 88, [599 - 512])
    mem.add(0x8000_0000, 256 * PAGE)
    assert [c[3] for c in source.nonzero_chunks(mem.regions[1:], PAGE)] == [[]]  # all zero


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["zero", "byte", "full", "half-zero"]), min_size=1, max_size=300))
def test_the_zero_page_search_agrees_with_a_page_by_page_comparison(kinds):
    mem = GuestMemory()
    mem.add(0x4000_0000, len(kinds) * PAGE)
    r = mem.regions[0]
    for i, kind in enumerate(kinds):
        at = i * PAGE
        if kind == "byte":
            r.mm[at + (i * 37) % PAGE] = b"\x01"
        elif kind == "full":
            r.mm[at:at + PAGE] = b"\xff" * PAGE
        elif kind == "half-zero":  # zero runs that cross page boundaries, but no zero page
            r.mm[at + PAGE // 2] = b"\x02"
    want = [i for i, kind in enumerate(kinds) if kind != "zero"]
    got = [first + k for _r, first, n, nz in source.nonzero_chunks(mem.regions, PAGE)
           for k in (range(n) if nz is None else nz)]
    assert got == want
    mem.close()


def _expect_failure(tmp_path, m, script, match):
    d = Destination(tmp_path / "in.sock", m, script)
    d.start()
    with pytest.raises(source.MigrationError, match=match):
        source.migrate(m, f"unix:{tmp_path}/in.sock", max_downtime_ms=1e-6)
    d.join(10)
    assert not m.paused and m.events[-1] == "resume"  # the guest runs on
    assert m.vm.flags.get(0, 0) == 0  # dirty logging off again
    assert m.mem.take_written() == {}  # and GuestMemory no longer records
    return d


def test_a_refusal_leaves_the_guest_running(tmp_path, fake_take):
    d = _expect_failure(tmp_path, FakeSourceMachine(),
                        lambda name, d: stream.frame(stream.REFUSE, b"this host has no SME") if name == "state-check"
                        else None, "the destination refused: this host has no SME")
    assert d.frames == ["state-check", "abort"]


def test_a_destination_that_goes_away_mid_copy_leaves_the_guest_running(tmp_path, fake_take):
    def script(name, d):
        if name == "state-check":
            return stream.frame(stream.ACCEPT)
        return "close" if name == "pages" else None
    _expect_failure(tmp_path, FakeSourceMachine(), script, "failed: the (connection broke|peer closed)")


def test_a_destination_that_goes_away_before_ready_leaves_the_guest_running(tmp_path, fake_take):
    def script(name, d):
        if name == "state":
            return "close"
        return happy(name, d)
    m = FakeSourceMachine()
    _expect_failure(tmp_path, m, script, "failed")
    assert m.events == ["pause", "resume", "pause", "resume"]


def test_a_malformed_answer_is_refused(tmp_path, fake_take):
    _expect_failure(tmp_path, FakeSourceMachine(),
                    lambda name, d: b"\x4d\0\0\0\0\0\0\0" if name == "state-check" else None,
                    "bad message .*unknown migration frame type 77")


def test_an_abort_from_the_destination_is_named(tmp_path, fake_take):
    def script(name, d):
        if name == "state":
            return stream.frame(stream.ABORT, b"cannot write the vGIC state")
        return happy(name, d)
    _expect_failure(tmp_path, FakeSourceMachine(), script, "gave up: cannot write the vGIC state")


def test_no_running_after_go_ends_the_source_too(tmp_path, fake_take):
    def script(name, d):
        return "close" if name == "go" else happy(name, d)
    m = FakeSourceMachine()
    d = Destination(tmp_path / "in.sock", m, script)
    d.start()
    with pytest.raises(source.MigrationError, match="did not confirm"):
        source.migrate(m, f"unix:{tmp_path}/in.sock")
    d.join(10)
    assert m.events[-1] == ("finish", ExitStatus.ERROR) and "resume" not in m.events[2:]


def test_nothing_listening_is_one_line(tmp_path, fake_take):
    m = FakeSourceMachine()
    with pytest.raises(transport.PeerError, match="nothing listens"):
        source.migrate(m, f"unix:{tmp_path}/none.sock")
    assert m.events == []


def test_a_paused_guest_and_vhost_machines_are_refused(tmp_path, fake_take):
    m = FakeSourceMachine()
    m.paused = True
    with pytest.raises(source.MigrationError, match="paused"):
        source.migrate(m, f"unix:{tmp_path}/x.sock")
    m = FakeSourceMachine()
    m.virtio = [types.SimpleNamespace(base=0xA000000, backend=types.SimpleNamespace(kernel_queues=True,
                                                                                  snapshot_refusal=None))]
    with pytest.raises(source.MigrationError, match="vhost"):
        source.migrate(m, f"unix:{tmp_path}/x.sock")
    m = FakeSourceMachine()
    m.pci_virtio = [types.SimpleNamespace(base=0, backend=types.SimpleNamespace(kernel_queues=False,
                                                                              snapshot_refusal="not this one"))]
    with pytest.raises(source.MigrationError, match="^cannot migrate this machine: not this one"):
        source.migrate(m, f"unix:{tmp_path}/x.sock")  # the virtio-pci functions are asked too
    assert m.events == []  # nothing paused


def test_pre_copy_stops_when_the_rest_fits_and_is_small_or_no_longer_shrinks():
    assert not source.stop_copying(10, 1000, estimate_ms=301, max_downtime_ms=300)  # does not fit
    assert source.stop_copying(source.SMALL_REST, 1000, 10, 300)  # small enough
    assert not source.stop_copying(719, 4096, 220, 300)  # fits, but another round leaves fewer
    assert source.stop_copying(700, 719, 220, 300)  # fits and stopped shrinking
    assert source.stop_copying(0, 0, 0, 300)
