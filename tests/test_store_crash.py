"""Crash safety: writers killed with SIGKILL, and readers running beside a writer (both backends)."""
from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import preforked
import pytest
from build_helpers import subprocess_env
import store_child
from store_samples import CODEBOOK, sample

from tokstore import TokenStore

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "store_child.py"
TOTAL, STEP = 400, 8


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request):
    return request.param


def start_writer(path, backend, *extra):
    env = {**subprocess_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{CHILD.parent}"}
    return preforked.popen([sys.executable, str(CHILD), str(path), backend, str(TOTAL), str(STEP),
                            *extra], cwd=REPO, env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preload="store")


def write_in_process(path, backend, total, step=STEP) -> str:
    """What store_child.py prints, run here: the same writer, for a run where nothing is killed."""
    said = io.StringIO()
    store_child.write(path, backend, total, step, out=said)
    return said.getvalue()


def allocated(path: Path) -> int:
    """Bytes of disk the store at `path` takes (its blocks: HDF5 leaves holes, copies fill them)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def made_reference(copy_of_made, tmp_path, backend, total) -> tuple[Path, int]:
    """(tmp_path's copy of the store an uninterrupted writer run makes, the bytes of disk it took
    as made): made once per test process, per backend and size (the fixture copy_of_made)."""
    name = f"reference{total}.zarr" if backend == "zarr" else f"reference{total}.h5"

    def make(where):
        write_in_process(where / name, backend, total)
        return allocated(where / name)

    return tmp_path / name, copy_of_made(f"store-{name}", make)


def reference_store(copy_of_made, tmp_path, backend, total) -> Path:
    return made_reference(copy_of_made, tmp_path, backend, total)[0]


def assert_prefix(store, n):
    """The store holds exactly samples 0..n-1, and is healthy."""
    assert len(store) == n
    assert store.check() == []
    for i in range(n):
        name, codes, texts = sample(i)
        got = store[i]
        assert got.name == name and np.array_equal(got.codes, codes) and got.texts == texts
    assert store.counts[CODEBOOK] == n


def store_files(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "tokstore.lock"}


def test_sigkill_at_random_points_then_resume(tmp_path, backend, copy_of_made):
    path = tmp_path / ("killed.zarr" if backend == "zarr" else "killed.h5")
    rng = random.Random(20240607)
    seen = []
    for _ in range(4):
        writer = start_writer(path, backend)
        ready, start = writer.stdout.readline().split()[:2]
        assert ready == "ready", writer.stderr.read()
        for _ in range(rng.randint(0, 6)):  # let a few commits pass, then kill at a random moment
            writer.stdout.readline()
        time.sleep(rng.uniform(0, 0.01))
        writer.kill()
        writer.wait()
        with TokenStore.open(path) as store:  # opens at the last commit, healthy
            assert len(store) % STEP == 0 and len(store) >= int(start)
            assert_prefix(store, len(store))
            seen.append(len(store))
    said = write_in_process(path, backend, TOTAL)  # resume to the end, uninterrupted
    assert said.split()[-4:-2] == ["done", str(TOTAL)]
    assert any(n < TOTAL for n in seen), f"no kill landed before the end: {seen}"

    reference = reference_store(copy_of_made, tmp_path, backend, TOTAL)
    with TokenStore.open(path) as resumed, TokenStore.open(reference) as uninterrupted:
        assert_prefix(resumed, TOTAL)
        assert resumed._record.to_dict() == uninterrupted._record.to_dict()  # lengths, crcs, meta
        assert np.array_equal(resumed.counts, uninterrupted.counts)
    # Same bytes on disk, file for file, both counts slots included: the slot alternates with
    # every commit, a killed commit is redone whole on resume, and so both runs make the same
    # commits and leave the same counts in the same slots.
    if backend == "zarr":
        assert store_files(path) == store_files(reference)


def test_reader_beside_a_writer_sees_only_commits(tmp_path, backend):
    path = tmp_path / ("live.zarr" if backend == "zarr" else "live.h5")
    writer = start_writer(path, backend, "hold")
    try:
        assert writer.stdout.readline().split()[:2] == ["ready", "0"]
        lines = iter(writer.stdout.readline, "")
        word, committed = next(line for line in lines if not line.startswith("committed")).split()
        assert word == "uncommitted", writer.stderr.read()
        with TokenStore.open(path) as store:  # the writer is alive, with data past its commit
            assert_prefix(store, int(committed))
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        with TokenStore.open(path) as store:
            assert_prefix(store, TOTAL)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
