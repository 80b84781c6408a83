"""The build's store writer runs on its own thread behind a bounded queue: encoding goes on while it
appends and commits, it never holds more than its queue's windows, a failure in it stops the build
with that failure (no hang), an error while committing after another error leaves the first one
the error the user sees, and under torchrun only rank 0 receives the windows."""
from __future__ import annotations

import errno
import threading
import time

import pytest
from build_helpers import (assert_same_store, build_args, committed, contents, run_cli,
                           run_torchrun, tiny_built, tiny_config, tiny_setup)

from tokstore import TokenStore
from tokstore import build as build_module
from tokstore import build_writer
from tokstore.build import BuildOptions, build
from tokstore.build_encode import EncodedWindow
from tokstore.synthetic import corrupt
from vqvae.exact import ExactnessError

WAIT = 60  # seconds: only a broken writer waits this long (the events fire at once otherwise)


def _options(dataset, checkpoint, store, log, **extra) -> BuildOptions:
    return BuildOptions(dataset.layout, checkpoint, tiny_config(), str(store), workers=0,
                        progress=False, log=log, **extra)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tokstore-store-writer"]


def test_a_slow_writer_does_not_hold_the_encoder_back(tmp_path, monkeypatch):
    """The first append waits until the encoder has produced the next window: inline (append
    between encodes) that never happens; on the writer thread it does at once."""
    dataset, checkpoint = tiny_setup(tmp_path, n=24)
    produced = [threading.Event() for _ in range(3)]
    seen_while_appending = []
    real_windows, real_append = build_module.encode_windows, build_writer.append

    def encode_windows(*args, **kwargs):
        for i, window in enumerate(real_windows(*args, **kwargs)):
            yield window
            produced[i].set()  # the main thread asked for the next one: window i is handed on

    def slow_append(state, window):
        if not seen_while_appending:
            seen_while_appending.append(produced[1].wait(WAIT))
        real_append(state, window)

    monkeypatch.setattr(build_module, "encode_windows", encode_windows)
    monkeypatch.setattr(build_writer, "append", slow_append)
    store = tmp_path / "s.zarr"
    summary = build(_options(dataset, checkpoint, store, print, window=8))
    assert seen_while_appending == [True]
    assert summary.samples == 24 and contents(store)["names"] == dataset.names
    assert _writer_threads() == []


def _window(i: int) -> EncodedWindow:
    return EncodedWindow([f"m{i}"], [], [], [], i + 1, 0)


def test_the_queue_bound_holds_the_producer_back(monkeypatch):
    """With the writer stuck in its first append, the producer gets `depth` more windows in and
    then blocks: it never runs further ahead of the store than the bound."""
    depth, n = 2, 10
    release = threading.Event()
    written = []

    def stuck_append(state, window):
        if not written:
            release.wait(WAIT)
        written.append(window.names[0])

    monkeypatch.setattr(build_writer, "append", stuck_append)
    writer = build_writer.StoreWriterThread(state=None, commit_every=10**9, depth=depth)
    handed = []

    def produce():
        for i in range(n):
            writer.write_round([_window(i)], check_commit=False)
            handed.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    deadline = time.monotonic() + WAIT
    # the first window in the writer's hands, `depth` queued: the producer cannot get further
    while not (len(handed) == n or (writer.queued == depth and len(handed) == depth + 1)):
        assert time.monotonic() < deadline, handed
        time.sleep(0.001)
    assert len(handed) == depth + 1
    release.set()
    producer.join(WAIT)
    assert writer.close() is None
    assert written == [f"m{i}" for i in range(n)]


def test_a_writer_failure_stops_the_build_with_it(tmp_path, monkeypatch):
    """A full disk at the third commit: the build raises that error (naming the store), the
    two commits before are kept, the writer thread is gone, nothing hangs."""
    dataset, checkpoint = tiny_setup(tmp_path, n=40)
    real_commit = TokenStore.commit
    commits = []

    def full_disk(self):
        if len(self) > 0:  # (len: the samples committed before this commit)
            commits.append(len(self))
            if len(commits) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(self)

    monkeypatch.setattr(TokenStore, "commit", full_disk)
    store = tmp_path / "s.zarr"
    with pytest.raises(OSError) as caught:
        build(_options(dataset, checkpoint, store, print, window=8, commit_every=8))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(store)
    assert commits == [8, 16]  # the writer stopped at its failure: no commit retried after it
    monkeypatch.undo()
    assert committed(store) == 16
    assert _writer_threads() == []


def test_a_failing_commit_after_a_failing_encode_leaves_the_encode_error(tmp_path, monkeypatch):
    """The encoder fails after two windows; committing them fails too (a full disk): the user
    sees the encoder's error, the commit's failure is said in one line, the store is unchanged."""
    dataset, checkpoint = tiny_setup(tmp_path, n=40)
    real_windows, real_commit = build_module.encode_windows, TokenStore.commit
    disk_full = threading.Event()

    def encode_windows(*args, **kwargs):
        windows = real_windows(*args, **kwargs)
        yield next(windows)
        yield next(windows)
        windows.close()
        disk_full.set()
        raise ExactnessError("exactness check failed: injected", 1.0)

    def full_disk(self):
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(self)

    monkeypatch.setattr(build_module, "encode_windows", encode_windows)
    monkeypatch.setattr(TokenStore, "commit", full_disk)
    store = tmp_path / "s.h5"
    said = []
    with pytest.raises(ExactnessError, match="injected"):
        build(_options(dataset, checkpoint, store, said.append, window=8))
    lines = [line for line in said if "failed too" in line]
    assert lines == [f"after that error, committing what was encoded failed too (OSError: [Errno "
                     f"{errno.ENOSPC}] No space left on device): {store} stays at its last commit"]
    monkeypatch.undo()
    assert committed(store) == 0
    assert _writer_threads() == []


def test_torchrun_a_load_failure_on_rank_1_stops_both_ranks_in_the_same_round(tmp_path):
    """Rank 0 alone sees the windows; its verdict (rank 1's window holds a NaN motion) reaches
    rank 1 in the same round: both stop, rank 0 commits the window before, nothing hangs."""
    dataset, checkpoint = tiny_setup(tmp_path, n=12)
    corrupt(dataset, "nan", dataset.names[4])  # window 1 of 3 entries: rank 1's first
    store = tmp_path / "s.zarr"
    result = run_torchrun(build_args(dataset, checkpoint, store, "--window", "3"))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # both ranks stop on it (each says it, as each did when every rank saw every window)
    said = f"{dataset.names[4]}.npy: contains 1 NaN or Inf values (found while loading"
    assert output.count(said) == 2, output
    assert contents(store)["names"] == dataset.names[:3]


def test_a_commit_per_window_on_the_writer_thread_gives_the_same_store(copy_of_made, tmp_path):
    """The hand-over keeps split order: committing every window (the writer thread busiest)
    gives the store a build committing once gives."""
    dataset, checkpoint, once = tiny_built(copy_of_made, tmp_path, n=24)
    many = tmp_path / "many.zarr"
    assert run_cli(*build_args(dataset, checkpoint, many, "--window", "4",
                               "--commit-every", "1")).exit_code == 0
    assert_same_store(many, once)
