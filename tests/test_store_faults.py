"""Faults at every write step, full disks, deleted locks, forked children, fsync order (both
backends): the store stays valid at its last commit, and re-running the same writer completes."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import preforked
import pytest
from build_helpers import subprocess_env
from store_samples import CODEBOOK, batch
from test_store_crash import (assert_prefix, made_reference, reference_store, store_files,
                              write_in_process)

from tokstore import TokenStore
from tokstore.store import StoreError, oscalls
from tokstore.store.errors import StoreLockedError, StoreWriteError
from tokstore.store.format import ARRAYS

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "store_child.py"
STEP = 8
KILLED = 86  # store_child's exit status at an injected fault


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request):
    return request.param


def store_path(tmp_path, backend, name="store"):
    return tmp_path / (f"{name}.zarr" if backend == "zarr" else f"{name}.h5")


def run_child(path, backend, total, **env):
    extra = {f"TOKSTORE_TEST_{k.upper()}": str(v) for k, v in env.items()}
    return preforked.run([sys.executable, str(CHILD), str(path), backend, str(total), str(STEP)],
                         cwd=REPO, capture_output=True, text=True, timeout=300, preload="store",
                         env={**subprocess_env(),
                              "PYTHONPATH": f"{REPO}{os.pathsep}{CHILD.parent}", **extra})


def same_content(path, expected):
    """Same record (lengths, checksums, meta) and the same committed bytes of every array."""
    with TokenStore.open(path) as got, TokenStore.open(expected) as want:
        assert got._record.to_dict() == want._record.to_dict()
        for name in ARRAYS:
            assert np.array_equal(got._read().array(name).read_all(),
                                  want._read().array(name).read_all()), name
        assert np.array_equal(got.counts, want.counts)


def fault_points(trace: list[str]) -> list[int]:
    """1-based steps to kill at: the first step of every run of equal kinds, and the last step
    of every run of fsyncs (the moment before the commit record is written)."""
    points = []
    for i, kind in enumerate(trace):
        first = i == 0 or trace[i - 1] != kind
        last_sync = kind == "fsync" and (i + 1 == len(trace) or trace[i + 1] != "fsync")
        if first or last_sync:
            points.append(i + 1)
    return points


def traced_steps(tmp_path, path, backend, total) -> list[str]:
    trace = tmp_path / "trace.txt"
    done = run_child(path, backend, total, trace=trace)
    assert done.returncode == 0, done.stderr
    return trace.read_text().split()


def leftovers(path: Path) -> list[Path]:
    """Temporary files or directories a writer left behind."""
    around = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    inside = ([p for p in path.rglob("*") if p.suffix in (".tmp", ".partial")]
              if path.is_dir() else [])
    return around + inside


def disk_state(path: Path) -> tuple:
    """Everything a kill left of the store at `path` on disk, to compare: each file and folder
    of the store and each temporary one beside it, by name, with its mode and bytes."""
    tops = [path] if path.exists() else []
    tops += sorted(p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))
    entries = []
    for top in tops:
        for p in [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]:
            entries.append((str(p.relative_to(path.parent)), p.lstat().st_mode,
                            p.read_bytes() if p.is_file() else None))
    return tuple(entries)


@pytest.mark.parametrize("phase", ["create", "resume"])
def test_killed_at_every_write_step_then_rerun(tmp_path, backend, phase, copy_of_made):
    """Killed at each kind of write step of a creating run (the store's first commit and the
    next), or of a resumed run: the store opens at a commit (or is not there yet), and re-running
    the same writer completes it, equal to an uninterrupted run."""
    total = 16
    expected = reference_store(copy_of_made, tmp_path, backend, total)
    path = store_path(tmp_path, backend, "probe")
    start = STEP if phase == "resume" else 0
    if start:
        assert run_child(path, backend, start).returncode == 0
    pristine = tmp_path / "pristine"
    if start:
        shutil.copytree(path, pristine) if path.is_dir() else shutil.copy(path, pristine)
    trace = traced_steps(tmp_path, path, backend, total)
    points = fault_points(trace)
    if backend == "zarr" and phase == "create":  # zarr's first commit already has every kind
        points = [p for p in points if p <= trace.index("zarr.write_record") + 40]
    assert len(points) >= 6
    checked: dict = {}  # the states left so far: each is checked (and rerun from) once
    for point in points:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if start:
            shutil.copytree(pristine, path) if pristine.is_dir() else shutil.copy(pristine, path)
        killed = run_child(path, backend, total, exit_at=point)
        assert killed.returncode == KILLED, (point, trace[point - 1], killed.stderr)
        where = f"killed at step {point} ({trace[point - 1]})"
        state = disk_state(path)
        if state in checked:  # byte for byte what an earlier kill left: the same checks pass
            continue
        checked[state] = where
        if path.exists():
            try:
                store = TokenStore.open(path)
            except StoreError as exc:
                raise AssertionError(f"{where}: {exc}") from None
            with store:
                assert len(store) % STEP == 0 and len(store) >= start, where
                assert_prefix(store, len(store))
        else:
            assert not start, where
        rerun = write_in_process(path, backend, total)  # fails with the writer's own error
        assert "done 16" in rerun, where
        same_content(path, expected)
        assert leftovers(path) == [], where
        if backend == "zarr":  # the same commits: the same bytes, file for file
            assert store_files(path) == store_files(expected), where


# ---- full disks ---------------------------------------------------------------------------
def check_failed_run(failed, path, reason):
    """One precise error naming the store and the reason, no noise from HDF5."""
    assert failed.returncode not in (0, KILLED), failed.stdout
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("tokstore.store.errors.StoreWriteError: ") and str(path) in last, last
    assert reason in last, last
    assert "Exception ignored" not in failed.stderr and "Segmentation" not in failed.stderr


def test_injected_disk_full_mid_run_then_resume(tmp_path, backend, copy_of_made):
    """ENOSPC from an OS call in the middle of the second commit's writes (zarr: a chunk file's
    rename; HDF5: the record): the store stays at the first commit, nothing temporary is left,
    and re-running completes it."""
    total = 32
    expected = reference_store(copy_of_made, tmp_path, backend, total)
    path = store_path(tmp_path, backend)
    trace = traced_steps(tmp_path, store_path(tmp_path, backend, "traced"), backend, total)
    first = [i for i, kind in enumerate(trace) if kind.endswith("write_record")][1]
    writing = next(i for i in range(first, len(trace)) if trace[i].endswith(".write"))
    target = next(i for i in range(writing, len(trace)) if trace[i] in ("replace", "pwrite"))
    failed = run_child(path, backend, total, enospc_at=target + 1)
    check_failed_run(failed, path, "No space left on device")
    with TokenStore.open(path) as store:
        assert len(store) == STEP
        assert_prefix(store, STEP)
    assert leftovers(path) == []
    resumed = run_child(path, backend, total)
    assert resumed.returncode == 0, resumed.stderr
    same_content(path, expected)


def test_file_size_limit_mid_build_then_resume(tmp_path, copy_of_made):
    """Writes failing inside HDF5's C code (RLIMIT_FSIZE: EFBIG): one precise error naming the
    store, no segfault, the store valid at its last commit, and re-running completes it."""
    backend, total = "hdf5", 400
    expected = reference_store(copy_of_made, tmp_path, backend, total)
    path = store_path(tmp_path, backend)
    first = reference_store(copy_of_made, tmp_path, backend, STEP).stat().st_size  # 1st commit
    failed = run_child(path, backend, total, fsize=(first + expected.stat().st_size) // 2)
    check_failed_run(failed, path, "File too large")
    assert "Exception ignored" not in failed.stderr and "Segmentation" not in failed.stderr
    commits = [line.split()[1] for line in failed.stdout.splitlines()
               if line.startswith("committed")]
    committed = int(commits[-1]) if commits else 0
    with TokenStore.open(path) as store:
        assert len(store) == committed and len(store) < total
        assert_prefix(store, len(store))
    assert leftovers(path) == []
    resumed = run_child(path, backend, total)
    assert resumed.returncode == 0, resumed.stderr
    same_content(path, expected)


def test_disk_full_then_resume(tmp_path, backend, small_tmpfs, copy_of_made):
    """A real ENOSPC from a small tmpfs: the same promises as the file size limit."""
    total = 400
    expected, used = made_reference(copy_of_made, tmp_path, backend, total)
    room = (used * 2 // 3) // 4096 * 4096
    subprocess.run(["mount", "-o", f"remount,size={room}", str(small_tmpfs)], check=True)
    path = store_path(small_tmpfs, backend)
    failed = run_child(path, backend, total)
    check_failed_run(failed, path, "No space left on device")
    if path.exists():
        with TokenStore.open(path) as store:
            assert len(store) < total
            assert_prefix(store, len(store))
    assert leftovers(path) == [] if path.exists() else True
    subprocess.run(["mount", "-o", f"remount,size={2 * used + (8 << 20)}", str(small_tmpfs)],
                   check=True)
    resumed = run_child(path, backend, total)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_content(path, expected)


@pytest.mark.parametrize("call, error_number", [("fsync", errno.ENOSPC), ("replace", errno.EROFS),
                                                ("pwrite", errno.EIO)])
def test_os_error_at_commit_is_precise_and_leaves_nothing(tmp_path, backend, monkeypatch, call,
                                                          error_number):
    path = store_path(tmp_path, backend)
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=64) as store:
        store.append(*batch(0, 8))
    if backend == "hdf5" and call == "replace" or backend == "zarr" and call == "pwrite":
        pytest.skip(f"{backend} commits without os.{call}")
    real = getattr(os, call)
    store = TokenStore.open(path, mode="a")
    store.append(*batch(8, 16))

    def failing(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))

    monkeypatch.setattr(os, call, failing)
    with pytest.raises(StoreWriteError) as caught:
        store.commit()
    monkeypatch.setattr(os, call, real)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and os.strerror(error_number) in message
    assert caught.value.errno == error_number and "\n" not in message
    store._close(commit=False)
    assert leftovers(path) == []
    with TokenStore.open(path) as reopened:
        assert_prefix(reopened, 8)


# ---- the writer lock ----------------------------------------------------------------------
def start_holding_writer(path, backend):
    writer = preforked.popen([sys.executable, str(CHILD), str(path), backend, "32", str(STEP),
                              "hold"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preload="store",
                             env={**subprocess_env(),
                                  "PYTHONPATH": f"{REPO}{os.pathsep}{CHILD.parent}"})
    for line in iter(writer.stdout.readline, ""):
        if line.startswith("uncommitted"):
            return writer
    raise AssertionError(writer.stderr.read())


def test_deleting_the_lock_file_lets_no_second_writer_in(tmp_path):
    path = store_path(tmp_path, "zarr")
    writer = start_holding_writer(path, "zarr")
    try:
        (path / "tokstore.lock").unlink(missing_ok=True)
        with pytest.raises(StoreLockedError, match="open for writing by another process"):
            TokenStore.open(path, mode="a")
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    with TokenStore.open(path) as store:
        assert_prefix(store, 32)


FORKING_WRITER = """
import os, sys, time
from tokstore import TokenStore
store = TokenStore.open(sys.argv[1], mode="a")
worker = os.fork()
if worker == 0:           # a DataLoader worker: inherits every descriptor
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(60)
    os._exit(0)
print("forked", worker, flush=True)
os._exit(0)               # the parent dies without closing anything (as SIGKILL would)
"""


def test_forked_children_do_not_keep_the_store_locked(tmp_path, backend):
    path = store_path(tmp_path, backend)
    with TokenStore.create(path, CODEBOOK, backend=backend) as store:
        store.append(*batch(0, 8))
    parent = preforked.run([sys.executable, "-c", FORKING_WRITER, str(path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60, preload="store",
                           env=subprocess_env())
    word, worker = parent.stdout.split()
    assert word == "forked", parent.stderr
    orphans = [worker]
    try:
        os.kill(int(worker), 0)  # the forked child is still running
        with TokenStore.open(path, mode="a") as store:  # no StoreLockedError
            store.append(*batch(8, 16))
        with TokenStore.open(path) as store:
            assert_prefix(store, 16)
    finally:
        for pid in orphans:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_lock_file_fallback_stops_a_writer_whose_lock_was_deleted(tmp_path, monkeypatch):
    """Where flock on a directory is refused (some network file systems), tokstore.lock is
    locked instead; deleting it stops the writer at its next commit, before anything is lost."""
    real = oscalls.fcntl.flock

    def no_directory_locks(fd, operation):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, operation)

    monkeypatch.setattr(oscalls.fcntl, "flock", no_directory_locks)
    path = store_path(tmp_path, "zarr")
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 8))
    store = TokenStore.open(path, mode="a")
    assert (path / "tokstore.lock").is_file()
    with pytest.raises(StoreLockedError):
        TokenStore.open(path, mode="a")
    store.append(*batch(8, 16))
    (path / "tokstore.lock").unlink()
    with pytest.raises(StoreLockedError, match="removed or replaced"):
        store.commit()
    store._close(commit=False)
    with TokenStore.open(path) as reopened:
        assert_prefix(reopened, 8)


# ---- durability: what is synced, in which order -------------------------------------------
def record_calls(monkeypatch, log):
    def fd_path(fd):
        return os.readlink(f"/proc/self/fd/{fd}")

    for name in ("fsync", "replace", "rename", "pwrite"):
        real = getattr(os, name)

        def wrapper(*args, _real=real, _name=name):
            if _name in ("fsync", "pwrite"):
                log.append((_name, fd_path(args[0])))
            else:
                log.append((_name, os.fspath(args[0]), os.fspath(args[1])))
            return _real(*args)
        monkeypatch.setattr(os, name, wrapper)


def snapshot(path: Path) -> dict:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def logged_commit(store, path, monkeypatch) -> tuple[list, dict]:
    """Commit and close `store` with its OS calls recorded: (the calls, snapshot after)."""
    log: list = []
    record_calls(monkeypatch, log)
    store.commit()
    monkeypatch.undo()
    store.close()
    return log, snapshot(path)


def synced_before_record(path, log) -> tuple[int, set]:
    """Where in `log` (record_calls) a zarr store's record was renamed into place (once), and
    the paths fsynced before it."""
    record = str(path / "zarr.json")
    renames = [i for i, call in enumerate(log) if call[0] == "replace" and call[2] == record]
    assert len(renames) == 1, log
    return renames[0], {call[1] for call in log[:renames[0]] if call[0] == "fsync"}


def test_commit_syncs_every_written_file_before_the_record(tmp_path, backend, monkeypatch):
    path = store_path(tmp_path, backend)
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=64) as store:
        store.append(*batch(0, 8))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(8, 40))
    before = snapshot(path)
    time.sleep(0.01)  # distinct mtimes
    log, after = logged_commit(store, path, monkeypatch)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed, "the commit wrote nothing?"
    if backend == "zarr":
        record = str(path / "zarr.json")
        at, synced_before = synced_before_record(path, log)
        temporary = log[at][1]
        data = changed - {record}
        assert data and data <= synced_before, data - synced_before
        assert temporary in synced_before
        folders = {str(Path(p).parent) for p in data}  # new chunk files are renamed into place
        assert folders <= synced_before, folders - synced_before
        assert ("fsync", str(path)) in log[at + 1:], log[at:]
    else:
        writes = [i for i, call in enumerate(log) if call[0] == "pwrite"]
        syncs = [i for i, call in enumerate(log) if call == ("fsync", str(path))]
        assert len(writes) == 2 and len(syncs) == 2, log
        payload, header = writes
        # HDF5's own writes all happen at its flush, before anything here: the first fsync
        # covers them and the payload; the header (the commit point) is written after it
        assert payload < syncs[0] < header < syncs[1]


def test_a_sync_failing_past_the_commit_point_says_the_commit_may_be_in(tmp_path, backend,
                                                                        monkeypatch):
    """The fsync after the commit point (HDF5: after the record's header; zarr: the folder's,
    after zarr.json's rename) failed with an error saying the store was as its last commit left
    it, yet a reopen found the failed commit, and the natural retry met DuplicateNameError."""
    from tokstore.store import hdf5_container

    path = store_path(tmp_path, backend)
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=4096) as store:
        store.append(*batch(0, 4))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(4, 8))
    real_fsync, real_replace, real_pwrite = os.fsync, os.replace, oscalls.pwrite_all
    passed = []  # set at the commit point

    def replace(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if Path(target) == path / "zarr.json":
            passed.append(True)

    def pwrite_all(fd, data, offset):
        real_pwrite(fd, data, offset)
        if len(data) == hdf5_container.SLOT_HEADER.size:
            passed.append(True)

    def fsync(fd):
        real_fsync(fd)
        if passed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(oscalls, "pwrite_all", pwrite_all)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreWriteError, match="may be in the store: reopen it"):
        store.commit()
    monkeypatch.undo()
    # the same object writes no more: its next commit would take the counts slot the landed
    # record names (a zarr store's did, and a failure before its commit point damaged it)
    store.append(*batch(8, 40))
    with pytest.raises(StoreError, match="not writing after an earlier failure"):
        store.commit()
    store._close(commit=False)
    with TokenStore.open(path) as store:
        assert len(store) == 8 and store.check() == []
