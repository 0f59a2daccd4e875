"""pyvmm/_threads.py: the thread, event and condition the run path uses instead of threading's."""
import time

from pyvmm import _threads


def test_thread_runs_joins_and_is_listed_while_alive():
    gate = _threads.Lock()
    gate.acquire()
    seen = []
    t = _threads.Thread(target=lambda x: (seen.append((x, _threads.get_ident())), gate.acquire()), args=(7,),
                        name="probe")
    assert not t.is_alive() and "probe" not in _threads.alive()
    t.start()
    assert t.is_alive() and "probe" in _threads.alive()
    t.join(0.05)
    assert t.is_alive()  # still waiting for the gate: the timed join gave up
    gate.release()
    t.join(10)
    assert not t.is_alive() and "probe" not in _threads.alive()
    assert seen == [(7, t.ident)]


def test_event_wait_set_clear():
    e = _threads.Event()
    t0 = time.monotonic()
    assert e.wait(0.05) is False and time.monotonic() - t0 >= 0.04
    _threads.Thread(target=lambda: (time.sleep(0.05), e.set())).start()
    assert e.wait(10) is True and e.is_set()
    assert e.wait() is True  # set stays set for every waiter
    e.clear()
    assert not e.is_set() and e.wait(0.01) is False
    e.set()
    e.set()  # twice is once
    assert e.wait(0) is True


def test_condition_wait_releases_the_lock_however_often_it_was_entered():
    c = _threads.Condition()
    flag = []

    def notifier():
        with c:  # enterable only while the waiter waits
            flag.append(1)
            c.notify_all()
    with c:
        with c:
            _threads.Thread(target=notifier).start()
            assert c.wait(10) is True
            assert flag == [1]
        assert c.wait(0.02) is False  # no one notifies: the timeout
    assert c._waiters == []


def test_a_thread_is_named_in_the_kernel_too():
    # top -H and /proc/PID/task/TID/comm show the thread's name (its first 15 bytes), not the program's
    seen = []

    def body():
        with open("/proc/thread-self/comm") as f:
            seen.append(f.read().strip())
    for name in ("virtio-io", "a-name-longer-than-fifteen-bytes"):
        t = _threads.Thread(target=body, name=name)
        t.start()
        t.join(10)
    assert seen == ["virtio-io", "a-name-longer-t"]


def test_start_daemon_names_a_threading_thread_in_the_kernel_too():
    seen = []

    def body(x):
        with open("/proc/thread-self/comm") as f:
            seen.append((x, f.read().strip()))
    t = _threads.start_daemon(body, (5,), "control-client")
    t.join(10)
    assert t.daemon and t.name == "control-client" and seen == [(5, "control-client")]
