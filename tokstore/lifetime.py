"""Process lifetime, the OS-specific part of the build: loader workers that die with their parent
and hold none of its locks, and SIGTERM/SIGINT turned into an exception the build can commit on.

Why: a forked DataLoader worker outlives a SIGKILLed build (it blocks on a full pipe forever) and
shares the open file description of the store's flock, so the store stays locked until someone
kills it by hand. Linux kills a worker with its parent through prctl(PR_SET_PDEATHSIG); elsewhere
a watchdog thread polls the parent pid. Spawned workers (macOS, Windows) inherit no locks. The
calls themselves are the platform module's (store/oscalls.py).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from .store import oscalls

WATCHDOG_SECONDS = 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def die_with_parent(parent: int, use_prctl: bool = True) -> str:
    """Make this (child) process end when `parent` does; returns the mechanism used."""
    mechanism = "watchdog"
    if use_prctl and oscalls.set_parent_death_signal(signal.SIGKILL):
        mechanism = "prctl"
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="tokstore-parent-watchdog").start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    return mechanism


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(WATCHDOG_SECONDS)
    os._exit(1)


def close_inherited_locks() -> list[int]:
    """Close every descriptor of this process that holds a file lock (flock or OFD lock). For a
    forked child: its copy shares the parent's lock, and closing the copy (never unlocking, which
    would release the parent's too) leaves the lock to the parent alone. Returns the closed
    descriptors; where the platform cannot list them, none."""
    closed = []
    for fd in oscalls.lock_holding_descriptors() or ():
        with contextlib.suppress(OSError):
            os.close(fd)
            closed.append(fd)
    return closed


def worker_init(parent: int, _worker_id: int | None = None) -> None:
    """DataLoader worker_init_fn: die with the parent, hold none of its locks, and leave stop
    signals to the parent. Ctrl-C, a scheduler or torchrun signal the whole process group; a
    worker that died of it would make the parent's loader raise in the middle of its commit. The
    parent ends its workers itself (or its death does)."""
    die_with_parent(parent)
    close_inherited_locks()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While entered (main thread only; elsewhere a no-op), SIGTERM and SIGINT raise Interrupted,
    except inside `held()`, where they are only recorded: a commit is never cut short, and a
    second signal cannot interrupt the commit the first one triggered. `received` is the first."""

    def __init__(self):
        self.received: int | None = None
        self._held = 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, _frame):
        first = self.received is None
        self.received = self.received or signum
        if first and not self._held:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self, raise_after: bool = False):
        """Signals inside are recorded only; with `raise_after`, one that came is raised at the
        end (work that must finish, then stop)."""
        before = self.received
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if raise_after and before is None and self.received is not None and not self._held:
            raise Interrupted(self.received)
