"""The sending side of a live migration: runs in the source VMM (the
control socket's ``migrate`` request) while its guest keeps running.

1. Refuse what cannot move (vhost data planes that do not log all their
   writes to guest RAM: vhost-vsock, virtio-fs; a device whose state
   cannot be saved). vhost-net's writes are in its own dirty log, merged
   with KVM's (pyvmm/snapshot/vhost_log.py).
2. Connect, send the preamble and the machine's state without memory
   (STATE_CHECK: read in a pause as short as a snapshot's without the
   memory); the destination runs restore's checks and builds the machine,
   then answers ACCEPT or REFUSE. Nothing was stopped yet. Meanwhile dirty
   logging is on and round 1's zero-page search runs ahead
   (:func:`nonzero_chunks`).
3. Round 1 sends every non-zero page, each later round
   the pages written during the previous one, while the guest runs, until
   what is left would take at most ``max_downtime`` at the measured rate
   and is small or no longer shrinks (:func:`stop_copying`), or MAX_ROUNDS
   rounds; that rest is sent too, still while the guest runs.
4. Pause; the vhost planes stopped (and held so until the end: a paused
   guest's receive ring can still be filled) and the ITS tables flushed
   into guest RAM (a machine with PCI devices); under the I/O lock, the
   last dirty pages and the final state
   (STATE); the destination loads it and answers READY (built, paused).
5. GO: from here the destination owns the guest. It answers RUNNING once
   its vCPUs run; then the caller ends this VMM (ExitStatus.POWEROFF,
   pyvmm run exits 0).

Any failure before GO (refusal, a peer that dies, closes or stops
answering, a malformed answer) stops the dirty log, restarts the vhost
planes and resumes the guest here as it was, and raises :class:`MigrationError` with the reason. After
GO the source never resumes (two copies of one guest must never run); a
missing RUNNING then ends this VMM too, with an error saying so.
"""
from __future__ import annotations

import itertools
import mmap
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .. import _threads
from ..dirty_log import DirtyLog, merge
from ..errors import PyvmmError, UsageProblem
from ..machine import ExitStatus, Machine
from ..snapshot import chain
from ..snapshot import format as fmt
from ..snapshot import machine_snapshot, vhost_log
from . import stream
from .gc_hold import CollectorHold
from .transport import Conn, PeerError, connect, parse

MAX_ROUNDS = 30
DEFAULT_MAX_DOWNTIME_MS = 300
IO_TIMEOUT = 30.0
BUILD_TIMEOUT = 300.0  # the destination builds the machine before it accepts
SMALL_REST = 64  # pages: a rest this small goes in the pause without another round
SHRINK = 0.75  # another round is worth it while the rest is at most this share of the last round's pages
_ZERO_CHUNK = stream.MAX_PAGES_PER_FRAME  # pages compared at once in round 1 (and sent in one frame)

Progress = Optional[Callable[[Dict], None]]


class MigrationError(PyvmmError):
    """The migration failed; the guest runs on here (unless the message says otherwise)."""


@dataclass
class MigrationReport:
    dest: str
    rounds: int
    bytes: int
    pages: int
    downtime_ms: float  # from the guest's pause here until the destination said RUNNING
    total_ms: float
    sent_ms: float  # from the guest's pause here until everything was sent (QEMU's "downtime" ends there)
    dirty_log: str  # "get+clear" (manual protection) or "get"
    collect_ms: float  # the slowest dirty-log collection (GET, CLEAR, bitmap scan)
    downtime_parts: Dict[str, float]  # where the downtime went, ms (last_pages: a count)
    # where the total time went, ms: check (to ACCEPT; of it check_sent until STATE_CHECK was sent and
    # scan_ahead the zero-page search done meanwhile, scan_ahead_pages: a count), round 1, later rounds, pause
    phases: Dict[str, float]


def ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 1)


def refusal(m: Machine) -> Optional[str]:
    """Why this machine cannot be migrated live, or None."""
    why = chain.untracked(m)
    if why:
        return why
    for t in m.transports:
        if t.backend.snapshot_refusal:
            return t.backend.snapshot_refusal
    if m.config.fss:
        return "its virtio-fs daemon writes guest memory that pyvmm does not track yet"
    return None


class _Sender:
    def __init__(self, m: Machine, conn: Conn, page_size: int, bandwidth: Optional[float]):
        self.m, self.conn, self.page = m, conn, page_size
        self.bandwidth = bandwidth  # bytes/s, None: unlimited
        self.pages_sent = 0
        self._t0 = time.monotonic()
        self._window_bytes = 0

    def send_frame(self, ftype: int, payload: bytes = b"") -> None:
        self.conn.send(stream.frame_header(ftype, len(payload)))  # apart: a page frame is not copied again
        if payload:
            self.conn.send(payload)
        self._throttle(len(payload))

    def _throttle(self, n: int) -> None:
        if not self.bandwidth:
            return
        self._window_bytes += n
        ahead = self._window_bytes / self.bandwidth - (time.monotonic() - self._t0)
        if ahead > 0:
            time.sleep(ahead)

    def send_page_frame(self, slot: int, indices: List[int], contents: Sequence[Any]) -> None:
        """One PAGES frame, its head and the contents (buffers, together the
        pages in order) sent as they are, not joined."""
        size = sum(len(c) for c in contents)
        head = stream.pages_head(slot, indices, size, self.page)
        self.conn.send_parts((stream.frame_header(stream.PAGES, len(head) + size) + head, *contents))
        self._throttle(len(head) + size)
        self.pages_sent += len(indices)

    def send_pages(self, slot: int, indices: List[int]) -> None:
        r, page = self.m.mem.regions[slot], self.page
        with memoryview(r.mm) as ram:  # each run of pages sent from guest RAM, not copied
            for batch in stream.batches(indices):
                self.send_page_frame(slot, batch, [ram[first * page:(first + n) * page]
                                                   for _, first, n in stream.runs(batch)])

    def send_round1(self, chunks: Iterable[Tuple[Any, int, int, Optional[List[int]]]],
                    progress: Callable[[int, int], None]) -> None:
        """Round 1: the non-zero pages of :func:`nonzero_chunks`, their
        contents read now (a page written since the search is in the dirty
        log: the contents sent are at least as new as the log's start)."""
        total = sum(r.size // self.page for r in self.m.mem.regions if not r.readonly)
        done = 0
        for r, first, n, nonzero in chunks:
            if nonzero is None:
                self.send_pages(r.slot, list(range(first, first + n)))
            elif nonzero:
                self.send_pages(r.slot, [first + k for k in nonzero])
            done += n
            progress(done, total)


def nonzero_chunks(regions, page: int) -> Iterator[Tuple[Any, int, int, Optional[List[int]]]]:
    """Round 1's search for non-zero pages, run by run of ``_ZERO_CHUNK``
    pages of writable guest RAM: (region, first page, pages in the run, the
    offsets of its non-zero pages, None: all of them). Exact only while the
    dirty log is on (a page found zero and written later is in it). A run
    without a page's worth of zero bytes anywhere in it (one search in guest
    RAM, nothing copied) has no zero page; only the others are copied and
    compared, the whole run first, then page by page (the loop over the
    pages in C: ``map`` of ``bytes.startswith`` at each page's offset)."""
    zero, zp = bytes(page * _ZERO_CHUNK), bytes(page)
    for r in regions:
        if r.readonly:
            continue
        npages = r.size // page
        # searched in the mapping the RAM lies in (an mmap: find runs in C on
        # guest RAM itself); a region without one (test fakes) as a copy
        ram, base = (r.owner, r.offset) if r.owner is not None else (bytes(r.mm), 0)
        for first in range(0, npages, _ZERO_CHUNK):
            n = min(_ZERO_CHUNK, npages - first)
            start, end = first * page, (first + n) * page
            if ram.find(zp, base + start, base + end) < 0:
                yield r, first, n, None
                continue
            chunk = r.mm[start:end]
            if chunk == (zero if n == _ZERO_CHUNK else bytes(end - start)):
                yield r, first, n, []
            else:
                zero_pages = map(chunk.startswith, itertools.repeat(zp, n), range(0, n * page, page))
                yield r, first, n, list(itertools.compress(range(n), map(operator.not_, zero_pages)))


class _LastPages:
    """The pause's last dirty pages, looked up and sent by a thread: the
    pages of the last round's collection (``dirty``) and the dirty log's
    last look (without write-protecting again: the log is stopped before
    the guest could run here again). :meth:`finish` waits for it and
    raises what it raised; ``pages`` is what it sent."""

    def __init__(self, snd: _Sender, log: DirtyLog, dirty: Dict[int, List[int]]):
        self.done_at = 0.0
        self.pages: Dict[int, List[int]] = {}
        self._error: Optional[BaseException] = None
        self._thread = _threads.start_daemon(self._run, (snd, log, dirty), "pyvmm-migrate-last")

    def _run(self, snd: _Sender, log: DirtyLog, dirty: Dict[int, List[int]]) -> None:
        try:
            self.pages = merge(dirty, log.collect(protect=False))
            for slot, indices in self.pages.items():
                snd.send_pages(slot, indices)
        except BaseException as e:  # noqa: BLE001 (handed to the caller by finish)
            self._error = e
        self.done_at = time.monotonic()

    def finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def stop_copying(left: int, last_round: int, estimate_ms: float, max_downtime_ms: float) -> bool:
    """Whether pre-copy ends with ``left`` dirty pages (``estimate_ms`` to
    send at the measured rate) after a round that sent ``last_round``: the
    rest must fit ``max_downtime_ms`` and be small, or have stopped
    shrinking (another round would leave about as much). The pages are
    only part of the pause (the state is read, sent and loaded too), so a
    rest that still shrinks is worth another round while the guest runs."""
    if estimate_ms > max_downtime_ms:
        return False
    return left <= SMALL_REST or left > last_round * SHRINK


def _expect(conn: Conn, page_size: int, expect, timeout: float) -> stream.Frame:
    f = stream.read_frame(lambda n: conn.recv_exact(n, timeout), page_size, expect)
    if f.type == stream.ABORT:
        raise MigrationError(f"the destination gave up: {stream.reason(f.payload)}")
    return f


def migrate(m: Machine, dest_text: str, max_downtime_ms: float = DEFAULT_MAX_DOWNTIME_MS,
            bandwidth_mib: Optional[float] = None, progress: Progress = None,
            io_timeout: float = IO_TIMEOUT, max_rounds: int = MAX_ROUNDS) -> MigrationReport:
    """Move the running guest of ``m`` to the pyvmm listening on
    ``dest_text`` (see the module docstring). ``progress(dict)`` hears
    ``{"round", "pages_left", "rate_mib"}`` and ``{"phase": ...}``."""
    def tell(**info) -> None:
        if progress is not None:
            progress(info)

    # The migration uses the dirty log itself: a later snapshot --since is refused.
    chain.forget(m)
    dest = parse(dest_text)
    if max_downtime_ms <= 0:
        raise UsageProblem(f"--max-downtime {max_downtime_ms}: give a positive number of milliseconds")
    if bandwidth_mib is not None and bandwidth_mib <= 0:
        raise UsageProblem(f"--bandwidth {bandwidth_mib}: give a positive number of MiB/s")
    why = refusal(m)
    if why:
        raise MigrationError(f"cannot migrate this machine: {why}")
    if m.paused:
        raise MigrationError("the guest is paused (pyvmm pause): resume it first; a migration moves a running guest")
    page = mmap.PAGESIZE
    t_start = time.monotonic()
    was_paused = m.paused
    conn = connect(dest, io_timeout)
    log = vhost_log.dirty_log(m)
    held: vhost_log.Held = []  # the vhost planes stopped at the pause
    paused_here = False
    handed_over = False
    save_cache: dict = {}  # the vCPUs' prepared register reads, kept for the final state
    gc_hold: Optional[CollectorHold] = None
    try:
        snd = _Sender(m, conn, page, bandwidth_mib * (1 << 20) if bandwidth_mib else None)
        conn.send(stream.preamble(page))
        # The state to check: read in a short pause (registers, vGIC, devices; no memory).
        tell(phase="checking")
        if not was_paused:
            m.pause()
        try:
            check_state = fmt.encode(machine_snapshot.take(m, memory=False, cache=save_cache))
        finally:
            if not was_paused:
                m.resume()
        snd.send_frame(stream.STATE_CHECK, check_state)
        t_check_sent = time.monotonic()
        # While the destination checks and builds: dirty logging on, then
        # round 1's search for non-zero pages runs ahead until the answer
        # comes (a page found zero and written later is in the dirty log).
        log.start()
        scan = nonzero_chunks(m.mem.regions, page)
        ahead: List[Tuple[Any, int, int, Optional[List[int]]]] = []
        if not conn.readable():
            for chunk in scan:
                ahead.append(chunk)
                if conn.readable():
                    break
        t_scanned = time.monotonic()
        answer = _expect(conn, page, (stream.ACCEPT, stream.REFUSE), BUILD_TIMEOUT)
        if answer.type == stream.REFUSE:
            raise MigrationError(f"the destination refused: {stream.reason(answer.payload)}")
        t_accept = time.monotonic()

        # Pre-copy while the guest runs.
        rounds = 1
        tell(phase="copying", round=1, pages_left=sum(r.size // page for r in m.mem.regions), rate_mib=0.0)
        t_round = time.monotonic()
        sent_before = conn.sent
        snd.send_round1(itertools.chain(ahead, scan),
                        lambda done, total: tell(round=1, pages_left=total - done, rate_mib=0.0)
                        if done % 4096 == 0 or done == total else None)
        t_first = time.monotonic()
        rate = (conn.sent - sent_before) / max(t_first - t_round, 1e-3)  # bytes/s
        dirty = log.collect()
        last_round = snd.pages_sent
        while True:
            left = sum(len(p) for p in dirty.values())
            estimate_ms = left * (page + 4) / max(rate, 1.0) * 1000
            tell(round=rounds, pages_left=left, rate_mib=round(rate / (1 << 20), 1))
            if rounds >= max_rounds or was_paused or stop_copying(left, last_round, estimate_ms, max_downtime_ms):
                break
            last_round = left
            rounds += 1
            t_round = time.monotonic()
            sent_before = conn.sent
            for slot, pages in dirty.items():
                snd.send_pages(slot, pages)
            spent = time.monotonic() - t_round
            if conn.sent - sent_before > (1 << 20) and spent > 0:
                rate = (conn.sent - sent_before) / spent
            dirty = log.collect()
        if not was_paused and dirty:
            # The rest goes now, while the guest runs, and the pause sends
            # only what the guest writes meanwhile: fewer pages than the rest
            # whenever the copy outruns the guest's writes (which is when
            # pre-copy converges at all), and a shorter pause.
            rounds += 1
            for slot, pages in dirty.items():
                snd.send_pages(slot, pages)
            dirty = {}

        # Stop and copy, without a cyclic garbage collection in the pause
        # (pyvmm/migration/gc_hold.py).
        tell(phase="stopping", round=rounds + 1)
        gc_hold = CollectorHold()
        t_pause = time.monotonic()
        if not was_paused:
            m.pause()
            paused_here = True
        # Under the I/O lock until the hand-over: no device model changes
        # guest memory or device state between what is sent and GO.
        with m.io_lock:
            held = vhost_log.stop_planes(m)  # before the last look at the dirty log
            # KVM's ITS tables into guest RAM, also before it: the pages it writes are sent
            machine_snapshot.flush_its(m)
            t_paused = time.monotonic()
            # The last pages are looked up and sent by a thread while the
            # state is read here (guest memory no longer changes; the
            # ioctls and the socket both run without the interpreter lock),
            # and the destination writes them meanwhile.
            rounds += 1
            sending = _LastPages(snd, log, dirty)
            read_parts: Dict[str, float] = {}
            try:
                final = machine_snapshot.take(m, memory=False, cache=save_cache, sealed=False, timing=read_parts,
                                              flushed=True)
                t_read = time.monotonic()
                final_state = fmt.encode(final)  # while the last pages may still be going out
                t_encoded = time.monotonic()
            finally:
                sending.finish()
            last = sending.pages
            t_pages = sending.done_at
            t_state = time.monotonic()
            snd.send_frame(stream.STATE, final_state)
            t_sent = time.monotonic()
            _expect(conn, page, (stream.READY,), BUILD_TIMEOUT)
            t_ready = time.monotonic()
            snd.send_frame(stream.GO)
            handed_over = True
        try:
            _expect(conn, page, (stream.RUNNING,), io_timeout)
        except (PeerError, stream.StreamError, MigrationError) as e:
            m.finish(ExitStatus.ERROR, f"migrated to {dest}, which did not confirm it runs the guest ({e})")
            raise MigrationError(f"the destination did not confirm it runs the guest ({e}); this VMM has "
                                 "stopped its copy (two copies must never run): check the destination") from None
        t_end = time.monotonic()
        # The caller ends this VMM (ExitStatus.POWEROFF) once it has told its client.
        return MigrationReport(str(dest), rounds, conn.sent, snd.pages_sent,
                               round((t_end - t_pause) * 1000, 1), round((t_end - t_start) * 1000, 1),
                               ms(t_pause, t_sent),
                               "get+clear" if log.manual else "get", round(log.slowest_ms, 2),
                               {"pause": ms(t_pause, t_paused), "send_last_pages": ms(t_paused, t_pages),
                                "last_pages": sum(len(p) for p in last.values()),
                                "state": ms(t_paused, t_read), "state_encode": ms(t_read, t_encoded),
                                **{f"state_{k}": v for k, v in read_parts.items()},
                                "after_pages": ms(t_pages, t_state),
                                "send": ms(t_state, t_sent),
                                "destination_load": ms(t_sent, t_ready), "handover": ms(t_ready, t_end)},
                               {"check": ms(t_start, t_accept), "check_sent": ms(t_start, t_check_sent),
                                "scan_ahead": ms(t_check_sent, t_scanned),
                                "scan_ahead_pages": sum(c[2] for c in ahead), "round1": ms(t_accept, t_first),
                                "later_rounds": ms(t_first, t_pause), "pause": ms(t_pause, t_end)})
    except BaseException as e:
        if not handed_over:
            if isinstance(e, (PeerError, stream.StreamError, MigrationError, PyvmmError)):
                try:
                    conn.send(stream.frame(stream.ABORT, stream.reason_payload(str(e))))
                except PeerError:
                    pass
            try:
                log.stop()
            finally:
                try:
                    vhost_log.restart_planes(held)
                finally:
                    if paused_here:
                        m.resume()
        if isinstance(e, PeerError):
            raise MigrationError(f"migration to {dest} failed: {e.message}") from None
        if isinstance(e, stream.StreamError):
            raise MigrationError(f"migration to {dest} failed: the destination sent a bad message ({e})") from None
        raise
    finally:
        if gc_hold is not None:
            gc_hold.release()
        conn.close()

