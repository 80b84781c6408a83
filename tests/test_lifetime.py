"""The OS-specific process rules the build relies on, each mechanism on its own: a child dies
with its parent (prctl on Linux, and the watchdog fallback), a forked child gives up its copy of
the parent's flock, and stop signals are held while a commit runs."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from build_helpers import REPO

from tokstore.lifetime import Interrupted, StopSignals, close_inherited_locks
from tokstore.store import oscalls


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.parametrize("use_prctl", [
    pytest.param(True, marks=pytest.mark.skipif(
        oscalls._libc is None, reason="prctl is Linux's (off with TOKSTORE_PORTABLE=1)")),
    False])
def test_a_child_dies_within_a_second_of_its_parent(use_prctl):
    script = textwrap.dedent(f"""
        import os, sys, time
        from tokstore.lifetime import die_with_parent
        parent = os.getpid()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            how = die_with_parent(parent, use_prctl={use_prctl})
            os.write(write, how.encode())
            time.sleep(60)
            os._exit(0)
        print(child, os.read(read, 16).decode(), flush=True)
        os._exit(0)  # the parent dies, the child would sleep on
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    pid, how = out.stdout.split()
    assert how == ("prctl" if use_prctl else "watchdog")
    deadline = time.monotonic() + 2
    while not _gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(int(pid)), f"the {how} child outlived its parent"


@pytest.mark.parametrize("close", [
    pytest.param(True, marks=pytest.mark.skipif(
        not oscalls.HAVE_PROC_FDINFO, reason="needs /proc (off with TOKSTORE_PORTABLE=1)")),
    False])
def test_a_forked_child_can_give_up_the_parents_flock(tmp_path, close):
    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        if close:
            close_inherited_locks()
        os.write(ready_w, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        os.close(fd)  # the parent is done with the store (or dead)
        other = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        os.close(other)
        assert free == close  # without closing, the live child keeps the lock
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_stop_signals_are_held_inside_and_raised_after():
    # restored to what they were: SIGINT is ignored, not Python's handler, in a process started
    # in the background by a shell without job control (nohup, `cmd &` in a script)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        with pytest.raises(Interrupted):
            with stop.held(raise_after=True):
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handlers ran here and raised nothing
        assert stop.received == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
