"""Live snapshots of Linux guests booted by ``pyvmm run`` (real KVM, Debian's
kernel, the project's initramfs): a userspace counter is snapshotted through
the control socket, pyvmm is killed, and a new process restores the guest,
whose counter and console continue exactly where they stopped.

Each test is one guest boot plus one restore."""
import base64
import json
import re
import signal
import time

import pytest

from pyvmm.arm64 import regs
from pyvmm.boot import layout
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot
from pyvmm.snapshot.describe import differences
from pyvmm.snapshot import manifest
from support.run_support import Running, guest_files, pyvmm, wait_ready

pytestmark = pytest.mark.kvm

LAST = 40  # the guest counts to this, checks its kernel log, and powers off
# Kernel log lines that mean the restore hurt the guest (dmesg is read inside
# the guest: the console is quiet, so warnings would not reach it).
BAD = "WARNING:|BUG:|Oops|stall|soft lockup|hard LOCKUP|Call trace|timed out|clocksource.*unstable"


def counter_script(device: str = "") -> str:
    """Counts every 0.3 s; with a disk, writes each count to it too."""
    disk = (f'echo "disk $i" | dd of={device} bs=512 seek=$i conv=notrunc,fsync 2>/dev/null\n'
            if device else "")
    text = (
        "i=0\n"
        f"while [ $i -lt {LAST} ]; do\n"
        "  i=$((i + 1))\n"
        '  echo "count $i"\n'
        f"  {disk}"
        "  sleep 0.3\n"
        "done\n"
        f"dmesg | grep -E '{BAD}'; echo \"dmesg-check $?\"\n"
    )
    return "pyvmm.cmd=" + base64.b64encode(text.encode()).decode()


def counts(text: str):
    return [int(n) for n in re.findall(r"(?m)^count (\d+)\r?$", text)]  # whole lines only


def ctl(*args, timeout=300):
    r = pyvmm(*args, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.decode()




def without_time(snap):
    """Everything a snapshot holds, apart from what moves with time: the
    counters (CNTVCT/CNTPCT), whether the timers have fired (ISTATUS and
    the timer interrupt lines), when it was taken,
    the file's blob table (its checksums), the seal (a MAC over all of it) and
    the chain link (its lineage names the VM whose dirty tracking wrote it)."""
    time_ids = {regs.sysreg_named("CNTVCT_EL0"), regs.sysreg_named("CNTPCT_EL0")}
    # CNTx_CTL_EL0.ISTATUS (bit 2, read-only) says whether the timer has fired by now
    ctl_ids = {regs.sysreg_named("CNTV_CTL_EL0"), regs.sysreg_named("CNTP_CTL_EL0")}

    def istatus_clear(v):
        return (int.from_bytes(v, "little") & ~4).to_bytes(len(v), "little")
    man = json.loads(json.dumps(snap.manifest))
    for key in ("created_at_ns", "blobs", "seal", "chain"):  # chain: which VM's tracking wrote it
        man.pop(key, None)
    # The timer PPIs' line levels are KVM's view of the timers against the
    # counter, which runs on between restore and the second snapshot.
    for redist in man["machine"]["gic"]["state"]["redist"]:
        redist["LINE_LEVEL"] &= ~machine_snapshot.TIMER_PPI_BITS
    # A restored virtio device with edge-triggered interrupts raises one edge
    # (VirtioMmio.after_restore), so its SPI may be pending in the second file.
    pending = man["machine"]["gic"]["state"]["dist"]["ISPENDR"]  # word w: SPIs 32w .. 32w+31
    for spi in range(layout.VIRTIO_SPI_BASE, layout.VIRTIO_SPI_BASE + layout.VIRTIO_SLOTS):
        if spi // 32 < len(pending):
            pending[spi // 32] &= ~(1 << (spi % 32))
    vcpus = []
    for st in manifest.vcpu_states(snap):
        st.saved_at_ns = 0
        st.registers = [(i, istatus_clear(v) if i in ctl_ids else bytes(v))
                        for i, v in st.registers if i not in time_ids]
        vcpus.append(st)
    man.pop("vcpus")
    memory = {k: bytes(v) for k, v in snap.blobs.items() if k.startswith("ram")}
    return man, vcpus, memory


def test_counter_guest_snapshot_kill_restore_in_new_process(tmp_path):
    kernel, initrd = guest_files()
    sock1, sock2 = tmp_path / "run.sock", tmp_path / "restore.sock"
    snap1, snap2 = tmp_path / "vm.snap", tmp_path / "again.snap"
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-c", "2", "-p", "quiet " + counter_script(),
                  "--control", sock1])
    vm.wait_for(b"count 5\r", timeout=300)
    assert (sock1.stat().st_mode & 0o777) == 0o600
    ctl("pause", sock1)
    before = counts(bytes(vm.out).decode(errors="replace"))
    out = ctl("snapshot", sock1, snap1)
    assert "the guest is paused" in out
    assert (snap1.stat().st_mode & 0o777) == 0o600
    seen = bytes(vm.out)  # the guest stayed paused: nothing more came out
    vm.p.send_signal(signal.SIGKILL)
    vm.p.wait(60)
    assert counts(seen.decode(errors="replace")) == before
    n = before[-1]
    assert before == list(range(1, n + 1)) and n < LAST

    # A new process restores it paused; a snapshot of that equals the first
    # apart from time.
    back = Running(["restore", snap1, "--control", sock2, "--paused"])
    assert wait_ready(sock2)["state"] == "paused"
    deadline_out = ctl("snapshot", sock2, snap2)
    assert "the guest is paused" in deadline_out
    a, b = fmt.load(str(snap1)), fmt.load(str(snap2))
    man_a, vcpus_a, mem_a = without_time(a)
    man_b, vcpus_b, mem_b = without_time(b)
    diff = differences(man_a, man_b)
    assert diff == [], diff  # configuration, GIC, devices
    assert len(vcpus_a) == 2
    for x, y in zip(vcpus_a, vcpus_b):
        assert differences(x.to_json(), y.to_json()) == []  # SVCR, MP state, events, VLs
        changed = [regs.name(i) for (i, v), (j, w) in zip(x.registers, y.registers) if i != j or v != w]
        assert len(x.registers) == len(y.registers) and changed == [], f"vcpu{x.index}: {changed}"
    assert mem_a == mem_b

    shown = ctl("inspect", snap1)  # the CLI reads machine snapshots too
    assert "2 vCPUs, 256 MiB, console serial" in shown and "gic: gicv3" in shown, shown[:2000]
    r = pyvmm("diff", snap1, snap2, timeout=300)
    assert r.returncode == 3, r.stderr  # they differ, in time only
    changed = r.stdout.decode()
    assert "CNTVCT_EL0" in changed and "memory" not in changed, changed[:2000]

    ctl("resume", sock2)
    err = back.finish(400)
    text = bytes(back.out).decode(errors="replace")
    assert back.p.returncode == 0, (err, text[-2000:])
    # The console continues exactly: the killed VM's output followed by the
    # restored one's counts 1..LAST with no gap and no repeat (a line the
    # pause cut in two is completed by the restored guest).
    whole = counts(seen.decode(errors="replace") + text)
    assert whole == list(range(1, LAST + 1)), (n, whole)
    assert "dmesg-check 1" in text, text[-2000:]  # grep found no warning in the guest's log
    assert b"pyvmm-guest: init" not in back.out  # it continued, it did not boot again


def test_virtio_console_and_disk_continue_after_restore(tmp_path):
    kernel, initrd = guest_files()
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    sock = tmp_path / "run.sock"
    snap = tmp_path / "vm.snap"
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "192M", "-c", "1", "--console", "virtio",
                  "--disk", disk, "-p", "quiet " + counter_script("/dev/vda"), "--control", sock])
    vm.wait_for(b"count 4\r", timeout=300)
    out = ctl("snapshot", sock, snap, "--stop")  # snapshot, then the VM ends
    assert "the guest is stopped" in out
    vm.wait_exit(120)
    assert vm.p.returncode == 0
    first = bytes(vm.out).decode(errors="replace")
    n = counts(first)[-1]

    # Issue 14 #1: the same snapshot altered to name another file of this
    # user as its disk (valid file checksum, the seal kept) is refused before
    # anything runs; that file is untouched.
    victim = tmp_path / "victim.img"
    victim.write_bytes(b"precious" * (1 << 17))
    crafted = tmp_path / "crafted.snap"
    loaded = fmt.load(str(snap))
    assert loaded.manifest["seal"]["alg"] == "hmac-sha256"  # pyvmm sealed its own snapshot
    loaded.manifest["machine"]["config"]["disks"][0]["path"] = str(victim)
    fmt.save(str(crafted), fmt.Snapshot(loaded.manifest, dict(loaded.blobs)))  # re-saved: RAM read back in
    r = pyvmm("restore", crafted, timeout=120)
    assert r.returncode == 2 and r.stdout == b"", r.stderr
    assert "its seal does not match its contents" in r.stderr.decode() and "--disk" in r.stderr.decode(), r.stderr
    assert victim.read_bytes() == b"precious" * (1 << 17)

    back = Running(["restore", snap, "--clock", "keep"])
    err = back.finish(400)
    text = bytes(back.out).decode(errors="replace")
    assert back.p.returncode == 0, (err, text[-2000:])
    whole = counts(first + text)
    assert whole == list(range(1, LAST + 1)), (n, whole)
    assert "dmesg-check 1" in text, text[-2000:]
    data = disk.read_bytes()
    for i in (1, n, n + 1, LAST):  # written before and after the restore, through the restored queue
        assert data[512 * i:512 * i + 16].startswith(f"disk {i}\n".encode()), (i, data[512 * i:512 * i + 16])


def test_restore_refuses_damaged_snapshot_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.snap"
    data = bytearray(fmt.encode(fmt.Snapshot({"kind": "machine", "machine": {}, "vcpus": []}, {"ram0": bytes(64)})))
    data[-40] ^= 1  # one flipped bit in a blob
    bad.write_bytes(bytes(data))
    r = pyvmm("restore", bad, timeout=120)
    assert r.returncode == 2  # a damaged file is bad input, like every malformed snapshot
    assert r.stderr.decode().count("\n") == 1 and "checksum" in r.stderr.decode(), r.stderr
    assert r.stdout == b""
    r = pyvmm("snapshot", tmp_path / "nobody.sock", tmp_path / "x.snap", timeout=120)
    assert r.returncode == 2 and "no control socket" in r.stderr.decode(), r.stderr
    assert not (tmp_path / "x.snap").exists()


def test_since_chain_restores_and_the_guest_continues(tmp_path):
    """pyvmm snapshot --since twice on a running counter guest (KVM's dirty
    log, left on after the first snapshot); the newest file restores the
    whole chain in a new process and the count continues. The chain's
    memory equals a full snapshot taken at the same (paused) moment, byte
    for byte: the dirty log missed no page."""
    kernel, initrd = guest_files()
    sock = tmp_path / "run.sock"
    s0, s1, s2, full = (tmp_path / n for n in ("s0.snap", "s1.snap", "s2.snap", "full.snap"))
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "192M", "-c", "2", "-p", "quiet " + counter_script(),
                  "--control", sock])
    vm.wait_for(b"count 3\r", timeout=300)
    ctl("snapshot", sock, s0)
    vm.wait_for(b"count 6\r", timeout=120)
    out = ctl("snapshot", sock, s1, "--since", s0)
    assert "changed since" in out and "the guest is running" in out, out
    vm.wait_for(b"count 9\r", timeout=120)
    # Paused before the refused snapshot: the guest counts to LAST in 9 s, and a
    # CLI start-up on a loaded host took that long (the count then ended first).
    ctl("pause", sock)
    r = pyvmm("snapshot", sock, tmp_path / "bad.snap", "--since", s0, timeout=120)  # not the latest: refused
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1, r.stderr
    assert "not this VM's latest snapshot" in r.stderr.decode() and not (tmp_path / "bad.snap").exists()
    ctl("snapshot", sock, s2, "--since", s1)
    ctl("snapshot", sock, full, "--stop")
    vm.wait_exit(120)
    assert vm.p.returncode == 0
    first = bytes(vm.out).decode(errors="replace")
    n = counts(first)[-1]
    assert n < LAST
    # incremental files hold only what changed
    assert s1.stat().st_blocks < s0.stat().st_blocks and s2.stat().st_blocks < s0.stat().st_blocks

    chained, whole = fmt.load(str(s2)), fmt.load(str(full))
    assert chained.manifest["chain"]["depth"] == 2 and [p.path for p in chained.parents] == [str(s1), str(s0)]
    assert bytes(chained.blobs["ram0"]) == bytes(whole.blobs["ram0"])
    assert chained.verify_ram() is None
    chained.close()
    whole.close()

    back = Running(["restore", s2])
    err = back.finish(400)
    text = bytes(back.out).decode(errors="replace")
    assert back.p.returncode == 0, (err, text[-2000:])
    assert counts(first + text) == list(range(1, LAST + 1)), (n, counts(text))
    assert "dmesg-check 1" in text, text[-2000:]
    assert b"pyvmm-guest: init" not in back.out
