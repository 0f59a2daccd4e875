"""The I/O thread: eventfd handlers run under the lock, one at a time; a
failing handler is reported and stops the thread."""
import os
import threading
import time

from pyvmm.devices.io_thread import IoThread, drain, eventfd


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_handlers_run_under_the_lock_for_each_signal():
    lock = threading.RLock()
    seen, errors = [], []
    io = IoThread(lock, errors.append)
    a, b = eventfd(), eventfd()
    io.add(a, lambda: seen.append(("a", lock._is_owned())))
    io.add(b, lambda: seen.append(("b", lock._is_owned())))
    io.start()
    try:
        os.eventfd_write(a, 3)  # three signals before the thread looks: one call
        wait_for(lambda: len(seen) == 1)
        os.eventfd_write(b, 1)
        wait_for(lambda: len(seen) == 2)
        assert seen == [("a", True), ("b", True)] and not errors and io.wakeups == 2
        assert drain(a) == 0  # the thread consumed the counter
    finally:
        io.close()
        os.close(a)
        os.close(b)


def test_a_failing_handler_is_reported_and_stops_the_thread():
    errors = []
    io = IoThread(threading.RLock(), errors.append)
    fd = eventfd()

    def boom():
        raise RuntimeError("bug")
    io.add(fd, boom)
    io.start()
    os.eventfd_write(fd, 1)
    wait_for(lambda: errors)
    assert isinstance(errors[0], RuntimeError)
    io.close()
    os.close(fd)


def test_stop_without_start_and_twice():
    io = IoThread(threading.RLock(), lambda e: None)
    io.stop()
    io.start()
    io.stop()
    io.close()
    assert threading.active_count() >= 1


def test_notifies_readers_and_hangups_in_one_thread():
    """Each kind of fd reaches its own handler: an eventfd (queue notify,
    drained before its handler runs), a watched reader (read by its
    handler), a socket's hang-up (once, then forgotten)."""
    import socket

    lock = threading.RLock()
    seen, errors = [], []
    io = IoThread(lock, errors.append)
    note = eventfd()
    r, w = os.pipe()
    mine, peer = socket.socketpair()
    io.add(note, lambda: seen.append("notify"))
    io.watch(r, lambda: seen.append(("read", os.read(r, 10))))
    io.watch_hangup(mine.fileno(), lambda: seen.append("hangup"))
    io.start()
    try:
        os.eventfd_write(note, 1)
        wait_for(lambda: "notify" in seen)
        assert drain(note) == 0
        os.write(w, b"typed")
        wait_for(lambda: ("read", b"typed") in seen)
        peer.close()
        wait_for(lambda: "hangup" in seen)
        os.eventfd_write(note, 1)
        wait_for(lambda: seen.count("notify") == 2)
        assert seen.count("hangup") == 1 and not errors and io.wakeups == 4
    finally:
        io.close()
        for fd in (note, r, w):
            os.close(fd)
        mine.close()


def test_a_kick_runs_its_handler_after_every_signal_without_reading_it():
    """add_kick: edge-triggered, the counter is not read; still one handler
    run after each signal that comes while the thread waits, and at least
    one after signals that came while a handler ran."""
    lock = threading.RLock()
    seen, errors = [], []
    io = IoThread(lock, errors.append)
    k = eventfd()
    gate = threading.Event()

    def handler():
        seen.append(len(seen))
        if len(seen) == 2:
            gate.wait(5)  # two signals arrive while this runs
    io.add_kick(k, handler)
    io.start()
    try:
        os.eventfd_write(k, 1)
        wait_for(lambda: len(seen) == 1)
        os.eventfd_write(k, 1)
        wait_for(lambda: len(seen) == 2)
        os.eventfd_write(k, 1)
        os.eventfd_write(k, 1)
        gate.set()
        wait_for(lambda: len(seen) == 3)
        time.sleep(0.1)
        assert len(seen) == 3 and not errors  # the two signals meanwhile: one more run
        os.eventfd_write(k, 1)
        wait_for(lambda: len(seen) == 4)
        assert drain(k) == 5  # nobody read the counter
        io.forget(k)
        os.eventfd_write(k, 1)
        time.sleep(0.1)
        assert len(seen) == 4
    finally:
        io.close()
        os.close(k)
