"""The build command (`python -m cli build`) killed while it creates its store, or meeting a full
disk: re-running the same command completes the store, equal to an uninterrupted build."""
from __future__ import annotations

import os
from pathlib import Path

import preforked
import pytest
from build_helpers import (CLI, REPO, assert_same_store, build_args, moved, subprocess_env,
                           tiny_setup)
from store_faults import KILLED

SITE = Path(__file__).resolve().parent / "fault_site"


def build(args, **faults):
    env = subprocess_env()
    if faults:
        env["PYTHONPATH"] = f"{SITE}{os.pathsep}{env['PYTHONPATH']}"
        env.update({f"TOKSTORE_TEST_{k.upper()}": str(v) for k, v in faults.items()})
    return preforked.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=env)


def traced_reference(copy_of_made, tmp_path, suffix, *extra):
    """(dataset, checkpoint, reference store, the trace of its build) in tmp_path: a tiny dataset
    and an uninterrupted traced build of it (with the `extra` flags), made once per test process
    (per suffix and flags: the fixture copy_of_made) and copied here."""
    def make(where):
        dataset, checkpoint = tiny_setup(where, n=12)
        traced = where / "trace.txt"
        done = build(build_args(dataset, checkpoint, where / f"reference{suffix}", *extra),
                     trace=traced)
        assert done.returncode == 0, done.stderr
        return dataset, traced.read_text().split()

    dataset, trace = copy_of_made(f"build-traced{suffix}{''.join(extra)}", make)
    return (moved(dataset, tmp_path / "data"), tmp_path / "checkpoint.pth",
            tmp_path / f"reference{suffix}", trace)


@pytest.mark.parametrize("suffix, stop_at", [(".zarr", "zarr.write_record"),
                                             (".zarr", "zarr.publish"),
                                             (".h5", "hdf5.start_writing"),
                                             (".h5", "hdf5.publish")])
def test_build_killed_while_creating_its_store_resumes(tmp_path, suffix, stop_at, copy_of_made):
    dataset, checkpoint, reference, trace = traced_reference(copy_of_made, tmp_path, suffix)
    step = trace.index(stop_at) + 1  # the first: while creating

    store = tmp_path / f"store{suffix}"
    killed = build(build_args(dataset, checkpoint, store), exit_at=step)
    assert killed.returncode == KILLED, killed.stderr
    rerun = build(build_args(dataset, checkpoint, store))
    assert rerun.returncode == 0, rerun.stderr
    assert "already complete" not in rerun.stdout + rerun.stderr
    assert_same_store(store, reference)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".store{suffix}")] == []


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_build_on_a_full_disk_stops_with_one_line_and_resumes(tmp_path, suffix, copy_of_made):
    dataset, checkpoint, reference, trace = traced_reference(copy_of_made, tmp_path, suffix,
                                                             "--commit-every", "4")
    last_commit = max(i for i, kind in enumerate(trace) if kind.endswith("write_record"))
    target = next(i for i in range(last_commit, len(trace)) if trace[i] in ("fsync", "pwrite"))

    store = tmp_path / f"store{suffix}"
    args = build_args(dataset, checkpoint, store, "--commit-every", "4")
    full = build(args, enospc_at=target + 1)
    assert full.returncode == 1, full.stdout
    lines = full.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(store) in lines[-1], full.stderr
    assert "No space left on device" in lines[-1] and "Traceback" not in full.stderr
    assert "built" not in full.stdout
    rerun = build(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already complete" not in rerun.stdout + rerun.stderr
    assert_same_store(store, reference)
