"""The live-migration stream on any host: preamble and frames round-trip,
and every malformed message is refused with its reason before anything
uses it; addresses parse; a listener takes one connection and is gone."""
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import UsageProblem
from pyvmm.migration import stream, transport
from pyvmm.migration.destination import same_machine
from pyvmm.snapshot import format as fmt

PAGE = 4096


def reader(data: bytes):
    pos = [0]

    def recv_exact(n):
        if pos[0] + n > len(data):
            raise EOFError("short")
        out = data[pos[0]:pos[0] + n]
        pos[0] += n
        return out
    return recv_exact


# -- preamble ---------------------------------------------------------------------

def test_preamble_round_trip():
    assert stream.parse_preamble(stream.preamble(PAGE)) == PAGE
    assert stream.parse_preamble(stream.preamble(65536)) == 65536


@pytest.mark.parametrize("data, why", [
    (b"PYVMMSNP" + struct.pack("<II", 1, 4096), "bad magic"),
    (stream.MAGIC + struct.pack("<II", 2, 4096), "version 2 is newer"),
    (stream.MAGIC + struct.pack("<II", 0, 4096), "version 0 is older"),
    (stream.MAGIC + struct.pack("<II", 1, 4097), "page size 4097"),
    (stream.MAGIC + struct.pack("<II", 1, 2048), "page size 2048"),
    (stream.MAGIC + struct.pack("<II", 1, 1 << 20), "page size 1048576"),
    (stream.MAGIC + b"\1\0\0", "preamble is 11 bytes"),
])
def test_bad_preambles_are_refused(data, why):
    with pytest.raises(stream.StreamError, match=why):
        stream.parse_preamble(data)


# -- frames -------------------------------------------------------------------------

def test_frames_round_trip():
    data = (stream.frame(stream.ACCEPT) + stream.frame(stream.REFUSE, b"no SME here")
            + stream.frame(stream.STATE, b"{}"))
    r = reader(data)
    assert stream.read_frame(r, PAGE) == (stream.ACCEPT, b"")
    f = stream.read_frame(r, PAGE)
    assert f.name == "refuse" and stream.reason(f.payload) == "no SME here"
    assert stream.read_frame(r, PAGE, (stream.STATE,)) == (stream.STATE, b"{}")


def _header(ftype, length, reserved=b"\0\0\0"):
    return struct.pack("<B3sI", ftype, reserved, length)


@pytest.mark.parametrize("header, expect, why", [
    (_header(0, 0), None, "unknown migration frame type 0"),
    (_header(200, 0), None, "unknown migration frame type 200"),
    (_header(stream.ACCEPT, 0, b"\0\1\0"), None, "non-zero reserved bytes"),
    (_header(stream.ACCEPT, 1), None, "accept frame carries 1 bytes"),
    (_header(stream.GO, 4), None, "go frame carries 4 bytes"),
    (_header(stream.REFUSE, stream.MAX_REASON + 1), None, "exceeds its limit"),
    (_header(stream.STATE, stream.MAX_STATE + 1), None, "exceeds its limit"),
    (_header(stream.PAGES, 8 + 257 * (4 + PAGE)), None, "exceeds its limit"),
    (_header(stream.READY, 0), (stream.ACCEPT, stream.REFUSE), "expected a accept or refuse frame, got ready"),
    (_header(stream.PAGES, 8), (stream.GO,), "expected a go frame, got pages"),
    (b"\1\0\0", None, "frame header is 3 bytes"),
])
def test_bad_frame_headers_are_refused_before_the_payload_is_read(header, expect, why):
    with pytest.raises(stream.StreamError, match=why):
        stream.parse_header(header, PAGE, expect)


def test_an_abort_is_always_accepted_as_the_next_frame():
    f = stream.read_frame(reader(stream.frame(stream.ABORT, b"disk full\n\x1b[2J")), PAGE, (stream.GO,))
    assert f.type == stream.ABORT and stream.reason(f.payload) == "disk full  [2J"


def test_an_empty_reason_is_named():
    assert stream.reason(b"") == "no reason given"
    assert len(stream.reason_payload("x" * 10000)) == stream.MAX_REASON


# -- page frames ---------------------------------------------------------------------

SLOTS = {0: 100}


def _pages(slot, indices, contents=None, page=PAGE):
    contents = contents if contents is not None else [bytes([i % 256]) * page for i in indices]
    return struct.pack("<II", slot, len(indices)) + struct.pack(f"<{len(indices)}I", *indices) + b"".join(contents)


def test_pages_round_trip():
    payload = stream.encode_pages(0, [1, 5, 99], [b"a" * PAGE, b"b" * PAGE, b"c" * PAGE], PAGE)
    slot, idx, data = stream.decode_pages(payload, SLOTS, PAGE)
    assert (slot, idx) == (0, [1, 5, 99])
    assert bytes(data[PAGE:2 * PAGE]) == b"b" * PAGE
    # the contents as one bytes object (a run read in one slice) make the same payload
    assert stream.encode_pages(0, [1, 5, 99], b"a" * PAGE + b"b" * PAGE + b"c" * PAGE, PAGE) == payload
    with pytest.raises(ValueError, match="holds 1..256 pages"):
        stream.encode_pages(0, [1, 5], b"a" * PAGE, PAGE)
    with pytest.raises(ValueError, match="one page each"):
        stream.encode_pages(0, [1, 5], [b"a" * PAGE, b"b"], PAGE)


BAD_PAGE_FRAMES = [
    (b"\0" * 7, "shorter than its header"),
    (_pages(1, [0]), "slot 1, which guest RAM does not have"),
    (struct.pack("<II", 0, 0), "with 0 pages"),
    (struct.pack("<II", 0, 257) + bytes(257 * (4 + PAGE)), "with 257 pages"),
    (_pages(0, [100]), "page 100 of slot 0, which has 100 pages"),
    (_pages(0, [0xFFFFFFFF]), "page 4294967295"),
    (_pages(0, [3, 3]), "not strictly increasing"),
    (_pages(0, [5, 2]), "not strictly increasing"),
    # shaped like one run of consecutive pages (last - first = count - 1), which they are not or which overruns
    (_pages(0, [98, 99, 100]), "page 100 of slot 0, which has 100 pages"),
    (_pages(0, [5, 5, 7]), r"not strictly increasing \(5 then 5\)"),
    (_pages(0, [6, 5, 7]), r"not strictly increasing \(6 then 5\)"),
    (_pages(0, [1])[:-1], "bytes, 1 pages make"),
    (_pages(0, [1]) + b"x", "bytes, 1 pages make"),
    (struct.pack("<II", 0, 2) + struct.pack("<I", 1), "bytes, 2 pages make"),
]


@pytest.mark.parametrize("payload, why", BAD_PAGE_FRAMES)
def test_bad_page_frames_are_refused(payload, why):
    with pytest.raises(stream.StreamError, match=why):
        stream.decode_pages(payload, SLOTS, PAGE)


def _read_into(payload, pages=SLOTS[0]):
    """read_pages_into over ``payload`` into a bytearray of ``pages`` pages: (result, memory, the receives)."""
    mem = bytearray(pages * PAGE)
    r = reader(payload)
    received = []

    def recv_into(view):
        received.append(len(view))
        view[:] = r(len(view))
    out = stream.read_pages_into(r, recv_into, len(payload), {0: pages}, PAGE, lambda slot: memoryview(mem))
    return out, mem, received


def test_pages_are_received_straight_into_memory_one_receive_per_run():
    payload = stream.encode_pages(0, [1, 2, 3, 7, 99], [bytes([c]) * PAGE for c in b"abcde"], PAGE)
    (slot, idx), mem, received = _read_into(payload)
    assert (slot, idx) == (0, [1, 2, 3, 7, 99])
    assert received == [3 * PAGE, PAGE, PAGE]
    assert mem[PAGE:4 * PAGE] == b"a" * PAGE + b"b" * PAGE + b"c" * PAGE
    assert mem[7 * PAGE:8 * PAGE] == b"d" * PAGE and mem[99 * PAGE:] == b"e" * PAGE
    assert mem[:PAGE] == bytes(PAGE) and mem[4 * PAGE:7 * PAGE] == bytes(3 * PAGE)
    assert stream.runs([0, 1, 5, 6, 7, 9]) == [(0, 0, 2), (2, 5, 3), (5, 9, 1)]
    assert stream.runs([4, 5, 6]) == [(0, 4, 3)] and stream.runs([4]) == [(0, 4, 1)] and stream.runs([]) == []
    (slot, idx), _mem, received = _read_into(stream.encode_pages(0, [96, 97, 98, 99], [bytes(PAGE)] * 4, PAGE))
    assert idx == [96, 97, 98, 99] and received == [4 * PAGE]


@pytest.mark.parametrize("payload, why", BAD_PAGE_FRAMES)
def test_bad_page_frames_received_into_memory_are_refused_before_any_content(payload, why):
    mem = bytearray(SLOTS[0] * PAGE)
    r = reader(payload)
    written = []
    with pytest.raises(stream.StreamError, match=why):
        stream.read_pages_into(r, written.append, len(payload), SLOTS, PAGE, lambda slot: memoryview(mem))
    assert written == [] and mem == bytes(len(mem))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_page_payloads_never_escape_their_bounds(noise):
    payload = struct.pack("<II", 0, 1) + noise[:4] + noise[4:] + bytes(PAGE)
    try:
        slot, idx, data = stream.decode_pages(payload, SLOTS, PAGE)
    except stream.StreamError:
        return
    assert slot == 0 and all(0 <= i < SLOTS[0] for i in idx) and len(data) == len(idx) * PAGE


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=8))
def test_random_frame_headers_are_checked_or_refused(header):
    try:
        ftype, length = stream.parse_header(header, PAGE)
    except stream.StreamError:
        return
    assert ftype in stream.TYPES and length <= stream.max_payload(ftype, PAGE)


def test_batches_cut_page_lists():
    assert [len(b) for b in stream.batches(list(range(600)))] == [256, 256, 88]


# -- the final state is the checked machine's --------------------------------------

def _state(config_mem=1 << 28, features=(2,)):
    return fmt.Snapshot({"machine": {"config": {"mem": config_mem}, "sme_bit": None, "cntfrq": 1, "memory": [],
                                     "gic": {"model": "gicv3"}},
                         "vcpus": [{"index": 0, "features": list(features), "sve_vls": None, "sme_vls": None}]})


def test_a_final_state_of_another_machine_is_named():
    assert same_machine(_state(), _state()) is None
    assert "config differs" in same_machine(_state(), _state(config_mem=1 << 29))
    assert "vCPUs differ" in same_machine(_state(), _state(features=(2, 4)))


# -- addresses and the one-connection listener ---------------------------------------

def test_addresses():
    assert transport.parse("tcp:10.0.0.2:4444") == ("tcp", "", "10.0.0.2", 4444)
    assert transport.parse("tcp:[::1]:4444") == ("tcp", "", "::1", 4444)
    assert transport.parse("tcp:4444", listening=True) == ("tcp", "", "127.0.0.1", 4444)
    assert transport.parse("tcp::4444") == ("tcp", "", "127.0.0.1", 4444)
    assert transport.parse("unix:/tmp/x.sock").path == "/tmp/x.sock"
    assert str(transport.parse("tcp:[::1]:5")) == "tcp:[::1]:5"


@pytest.mark.parametrize("text", ["", "unix:", "tcp:", "tcp:4444", "tcp:host:0", "tcp:host:65536",
                                  "tcp:host:http", "tcp:[::1]4444", "udp:1.2.3.4:5", "/tmp/x.sock",
                                  "unix:/" + "x" * 200])
def test_bad_addresses_are_usage_errors(text):
    with pytest.raises(UsageProblem):
        transport.parse(text)


def test_a_unix_listener_takes_one_connection_then_is_gone(tmp_path):
    dest = transport.parse(f"unix:{tmp_path}/in.sock")
    lst = transport.Listener(dest)
    assert (tmp_path / "in.sock").exists() and ((tmp_path / "in.sock").stat().st_mode & 0o777) == 0o600
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("c", transport.connect(dest, 5)))
    t.start()
    conn = lst.accept(5, 5)
    t.join()
    assert not (tmp_path / "in.sock").exists()
    with pytest.raises(transport.PeerError):
        transport.connect(dest, 2)
    out["c"].send(b"hello")
    assert conn.recv_exact(5) == b"hello"
    out["c"].close()
    with pytest.raises(transport.PeerError, match="closed the connection"):
        conn.recv_exact(1)
    conn.close()


def test_a_tcp_listener_binds_loopback_by_default_and_times_out():
    dest = transport.Dest("tcp", "", transport.DEFAULT_TCP_HOST, 0)  # port 0: any free one
    lst = transport.Listener(dest)
    host, port = lst.address()
    assert host == "127.0.0.1" and port > 0
    with pytest.raises(transport.PeerError, match="no migration source connected"):
        lst.accept(0.2, 1)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the listener is closed


def test_a_silent_peer_times_out(tmp_path):
    a, b = socket.socketpair()
    conn = transport.Conn(a, 0.3)
    with pytest.raises(transport.PeerError, match="sent nothing"):
        conn.recv_exact(4)
    conn.close()
    b.close()


# -- the receiving side applies only well-formed pages --------------------------------

def _incoming_with(tmp_path, data: bytes):
    """An Incoming whose source sent ``data`` (after the preamble) and closed."""
    from pyvmm.migration.destination import Incoming

    inc = Incoming(f"unix:{tmp_path}/in.sock", io_timeout=5)
    client = transport.connect(transport.parse(f"unix:{tmp_path}/in.sock"), 5)
    client.send(stream.preamble(PAGE) + data)
    client.sock.shutdown(socket.SHUT_WR)
    inc.accept(5)
    assert not (tmp_path / "in.sock").exists()
    return inc, client


class _Ram:
    def __init__(self, pages):
        import mmap as _mmap
        mm = _mmap.mmap(-1, pages * PAGE)  # a fake Region: its RAM is all of its mapping
        self.regions = [type("R", (), {"slot": 0, "size": pages * PAGE, "readonly": False,
                                       "mm": mm, "owner": mm, "offset": 0})()]


def test_incoming_pages_land_in_guest_ram_and_a_bad_index_stops_everything_after(tmp_path):
    good = stream.frame(stream.PAGES, stream.encode_pages(0, [2], [b"g" * PAGE], PAGE))
    bad = stream.frame(stream.PAGES, _pages(0, [8]))  # the slot has 8 pages: 0..7
    after = stream.frame(stream.PAGES, stream.encode_pages(0, [3], [b"h" * PAGE], PAGE))
    inc, client = _incoming_with(tmp_path, good + bad + after)
    inc.first = fmt.Snapshot({})
    m = type("M", (), {"mem": _Ram(8)})()
    with pytest.raises(stream.StreamError, match="page 8 of slot 0, which has 8 pages"):
        inc._receive(m)
    ram = m.mem.regions[0].mm
    assert ram[2 * PAGE:3 * PAGE] == b"g" * PAGE and ram[3 * PAGE:4 * PAGE] == bytes(PAGE)
    assert inc.pages_received == 1
    inc.close()
    client.close()


def test_incoming_source_that_hangs_up_mid_stream_is_named(tmp_path):
    inc, client = _incoming_with(tmp_path, stream.frame(stream.PAGES, stream.encode_pages(0, [1], [b"x" * PAGE], PAGE)))
    inc.first = fmt.Snapshot({})
    with pytest.raises(transport.PeerError, match="closed the connection"):
        inc._receive(type("M", (), {"mem": _Ram(4)})())
    inc.close()
    client.close()


def test_incoming_with_another_protocol_is_refused(tmp_path):
    from pyvmm.migration.destination import Incoming

    inc = Incoming(f"unix:{tmp_path}/in.sock", io_timeout=5)
    client = transport.connect(transport.parse(f"unix:{tmp_path}/in.sock"), 5)
    client.send(b"GET / HTTP/1.1\r\n")
    with pytest.raises(stream.StreamError, match="bad magic"):
        inc.accept(5)
    inc.close()
    client.close()


def test_before_hears_each_run_before_it_is_received():
    payload = stream.encode_pages(0, [1, 2, 3, 7], [bytes([c]) * PAGE for c in b"abcd"], PAGE)
    mem = bytearray(SLOTS[0] * PAGE)
    r = reader(payload)
    events = []

    def recv_into(view):
        events.append(("recv", len(view)))
        view[:] = r(len(view))
    stream.read_pages_into(r, recv_into, len(payload), {0: SLOTS[0]}, PAGE, lambda slot: memoryview(mem),
                           lambda slot, first, n: events.append(("before", slot, first, n)))
    assert events == [("before", 0, 1, 3), ("recv", 3 * PAGE), ("before", 0, 7, 1), ("recv", PAGE)]
