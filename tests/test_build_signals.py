"""A build killed or stopped while its loader workers run: SIGKILL leaves no process behind and no
lock held (the re-run resumes at once); SIGTERM and SIGINT commit the finished windows and say, in
one line, what was kept and how to resume; the resumed store equals an uninterrupted build."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import preforked
import pytest
from build_helpers import (CLI, REPO, assert_same_store, build_args, committed, contents,
                           run_cli, subprocess_env, tiny_setup, torchrun_command)

from tokstore import TokenStore, build_writer

N = 240  # 30 windows of 8, a commit every 4: a signal after the first commit lands long before
# the end (zarr writes ~30 ms of files per commit of a few samples: a commit per window would
# make most of each build's time)
# one length (24 frames after cropping): every window is one batch of 8, so the exactness
# calibration (its first ~2k frames of multi-row batches) ends after ~11 windows, long before the
# loader's workers finish; with distinct lengths it reads the whole tiny set ahead first
LENGTHS = (24, 26)


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


# whether the kernel keeps each thread's list of children in /proc (CONFIG_PROC_CHILDREN)
CHILDREN_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid: int) -> set[int]:
    """The children of `pid` (each thread's list in /proc: a worker may be started from any
    thread), read from its own files instead of every process's; without such lists, found by
    reading every process's parent."""
    if not CHILDREN_LISTS:
        return {int(p) for p in os.listdir("/proc") if p.isdigit()
                if (s := _stat(int(p))) is not None and s[0] == pid}
    found = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
                found.update(map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split()))
    except (FileNotFoundError, ProcessLookupError):  # gone
        pass
    return found


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` now: {pid: start time}. A preforked child counts as the child of
    the relay it stands in for (its real parent is the server)."""
    standing_in: dict[int, set[int]] = {}
    for child, relay in preforked.stand_ins().items():
        standing_in.setdefault(relay, set()).add(child)
    found, frontier = {}, {pid}
    while frontier:
        below = set()
        for p in frontier:
            below |= _children(p) | standing_in.get(p, set())
        frontier = set()
        for p in below - found.keys():
            if (s := _stat(p)) is not None:
                found[p] = s[2]
                frontier.add(p)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """Those of `processes` still running (zombies are dead: their exit waits only for a reaper)."""
    return [p for p, start in processes.items()
            if (s := _stat(p)) is not None and s[2] == start and s[1] != "Z"]


def start_build(args):
    return preforked.popen(CLI + args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)


def start_mid_way_build(tmp_path, name: str):
    """A build of N motions in windows of 8, a commit every 4, two loader workers, just started."""
    dataset, checkpoint = tiny_setup(tmp_path, n=N, lengths=LENGTHS)
    store = tmp_path / name
    args = build_args(dataset, checkpoint, store, "--window", "8", "--commit-every", "32",
                      "--workers", "2")
    return store, args, start_build(args)


def wait_for_workers(process, store, workers: int):
    """Block until the build has committed once and its loader workers run: {pid: start}."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if committed(store) > 0 and len(children := descendants(process.pid)) >= workers:
            return children
        time.sleep(0.03)  # each look opens the store (~3 ms): CPU the build needs
    process.kill()
    raise AssertionError(f"the build ended or stalled before it was mid-way: "
                         f"{process.communicate()}")


def assert_none_alive_soon(processes):
    deadline = time.monotonic() + 2
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive(processes) == [], "build processes outlived the build by 2 s"


def clean_build(copy_of_made, tmp_path, suffix: str) -> Path:
    """An uninterrupted build of the N motions into tmp_path/clean/once{suffix}: made once per
    test process (the dataset and model are the same in every test: tiny_setup's seed)."""
    def make(where):
        dataset, checkpoint = tiny_setup(where / "clean", n=N, lengths=LENGTHS)
        assert run_cli(*build_args(dataset, checkpoint, where / "clean" / f"once{suffix}")
                       ).exit_code == 0

    copy_of_made(f"signals-clean{suffix}", make)
    return tmp_path / "clean" / f"once{suffix}"


def rerun_equals_a_clean_build(copy_of_made, tmp_path, store, args):
    result = preforked.run(CLI + args, cwd=REPO, env=subprocess_env(), capture_output=True,
                           text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and f"{N} samples" in result.stdout
    assert_same_store(store, clean_build(copy_of_made, tmp_path, store.suffix))


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_sigkill_with_workers_leaves_no_process_and_no_lock(tmp_path, name, copy_of_made):
    store, args, process = start_mid_way_build(tmp_path, name)
    try:
        children = wait_for_workers(process, store, 2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert_none_alive_soon(children)
    assert 0 < committed(store) < N
    rerun_equals_a_clean_build(copy_of_made, tmp_path, store, args)


@pytest.mark.parametrize("name, sig, ctrl_c_twice", [
    ("s.zarr", signal.SIGTERM, False), ("s.h5", signal.SIGTERM, False),
    ("s.zarr", signal.SIGINT, False), ("s.h5", signal.SIGINT, True)])
def test_a_stop_signal_with_workers_commits_says_so_in_one_line_and_resumes(tmp_path, name, sig,
                                                                           ctrl_c_twice,
                                                                           copy_of_made):
    """ctrl_c_twice: SIGINT to the whole process group (workers too), and again 50 ms later."""
    store, args, process = start_mid_way_build(tmp_path, name)
    try:
        children = wait_for_workers(process, store, 2)
        if ctrl_c_twice:
            os.killpg(process.pid, sig)
            time.sleep(0.05)
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + sig, stderr
    assert_none_alive_soon(children)
    kept = committed(store)
    assert 0 < kept < N
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted by {signal.Signals(sig).name}: {kept} samples committed to "
                     f"{store}; re-run the same command to resume"], stderr
    assert "Traceback" not in stderr
    rerun_equals_a_clean_build(copy_of_made, tmp_path, store, args)


def _signal_after_windows(monkeypatch, windows: int, sig=signal.SIGTERM, during_commit=()):
    """Send this process `sig` right after the `windows`-th append (on the writer thread: the
    main thread gets it); `during_commit`: signals sent in the middle of every later commit (the
    one the first signal triggers)."""
    real_append, real_commit = build_writer.append, TokenStore.commit
    appended = []

    def append(job, window):
        real_append(job, window)
        appended.append(len(window.names))
        if len(appended) == windows:
            os.kill(os.getpid(), sig)

    def commit(self):
        if len(appended) >= windows:
            for extra in during_commit:
                os.kill(os.getpid(), extra)
        real_commit(self)

    monkeypatch.setattr(build_writer, "append", append)
    monkeypatch.setattr(TokenStore, "commit", commit)
    return appended


@pytest.mark.parametrize("during_commit", [(), (signal.SIGTERM, signal.SIGINT)])
def test_sigterm_commits_every_finished_window_even_if_signalled_again(tmp_path, monkeypatch,
                                                                        during_commit):
    """--commit-every far beyond the split: only the signal's commit can keep the 3 windows. The
    encoder runs ahead of the writer thread: the windows already handed to it when the signal
    arrives are written and committed too, each whole."""
    dataset, checkpoint = tiny_setup(tmp_path, n=40)
    store = tmp_path / "s.zarr"
    appended = _signal_after_windows(monkeypatch, 3, during_commit=during_commit)
    result = run_cli(*build_args(dataset, checkpoint, store, "--window", "8",
                                 "--commit-every", "100000"))
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert len(appended) >= 3 and set(appended) == {8}  # 40 motions: 5 windows of 8
    kept = sum(appended)
    assert contents(store)["names"] == dataset.names[:kept]
    assert result.output.strip().splitlines()[-1] == (
        f"interrupted by SIGTERM: {kept} samples committed to {store}; re-run the same command to "
        "resume")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_sigterm_to_torchrun_commits_once_and_leaves_no_process(tmp_path, copy_of_made):
    """torchrun passes SIGTERM to both ranks (and the whole group gets it): rank 0 commits and
    speaks, rank 1 stays quiet, the loaders ignore it and die with their rank. torchrun's own
    SignalException traceback is torchrun's."""
    dataset, checkpoint = tiny_setup(tmp_path, n=N, lengths=LENGTHS)
    store = tmp_path / "s.zarr"
    args = build_args(dataset, checkpoint, store, "--window", "8", "--commit-every", "32",
                      "--workers", "2")
    command, env, per_rank = torchrun_command(args, tmp_path)
    process = preforked.popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # 2 ranks (each a relay and its preforked child, or one fresh process), 2 loaders each
        children = wait_for_workers(process, store, 2 * per_rank + 4)
        os.killpg(process.pid, signal.SIGTERM)  # as a scheduler stops a job
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert_none_alive_soon(children)
    kept = committed(store)
    assert [line for line in stderr.splitlines() if "interrupted" in line] == [
        f"interrupted by SIGTERM: {kept} samples committed to {store}; re-run the same command "
        "to resume"], stderr
    assert not [line for line in stderr.splitlines() if line.startswith("[rank")], stderr
    rerun_equals_a_clean_build(copy_of_made, tmp_path, store, args)
