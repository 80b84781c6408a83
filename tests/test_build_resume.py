"""Crash safety and scale-out, with real processes: a build SIGKILLed after its first commit and
re-run ends identical to an uninterrupted build; `torchrun --nproc-per-node 2` (gloo on CPU)
writes the store one process writes."""
from __future__ import annotations

import signal
import subprocess
import time

import preforked
import pytest
from build_helpers import (CLI, REPO, assert_same_store, build_args, committed, contents,
                           run_cli, run_torchrun, subprocess_env, tiny_setup)

from tokstore.synthetic import corrupt


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_sigkill_then_rerun_equals_an_uninterrupted_build(tmp_path, name):
    n = 240  # 30 windows of 8, a commit every 4: the kill lands long before the end
    dataset, checkpoint = tiny_setup(tmp_path, n=n, lengths=(8, 40))
    store = tmp_path / name
    args = build_args(dataset, checkpoint, store, "--window", "8", "--commit-every", "32")
    process = preforked.popen(CLI + args, cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while committed(store) == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # each look opens the store: a tighter loop takes the build's CPU
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    killed_at = committed(store)
    assert 0 < killed_at < n

    result = preforked.run(CLI + args, cwd=REPO, env=subprocess_env(), capture_output=True,
                           text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and f"{n} samples" in result.stdout
    assert run_cli(*build_args(dataset, checkpoint, tmp_path / ("once" + name))).exit_code == 0
    assert_same_store(store, tmp_path / ("once" + name))


def test_torchrun_two_processes_write_the_single_process_store(tmp_path):
    """Two gloo ranks resume a half-built store (the split grew), one entry fails to load in a
    window of rank 1; the result equals one process building the whole split at once."""
    dataset, checkpoint = tiny_setup(tmp_path, n=30)
    corrupt(dataset, "nan", dataset.names[20])
    split = dataset.layout.split_file
    full = split.read_text()
    split.write_text("".join(f"{name}\n" for name in dataset.names[:9]))
    store = tmp_path / "ranks.zarr"
    options = ["--on-error", "skip", "--window", "3"]
    assert run_cli(*build_args(dataset, checkpoint, store, *options)).exit_code == 0
    split.write_text(full)

    result = run_torchrun(build_args(dataset, checkpoint, store, *options))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("built ") == 1  # rank 0 speaks for both
    assert "this run encoded 20 motions (resumed after 9)" in result.stdout
    assert run_cli(*build_args(dataset, checkpoint, tmp_path / "one.zarr", *options)).exit_code == 0
    assert_same_store(store, tmp_path / "one.zarr")
    assert [s["name"] for s in contents(store)["skipped"]] == [dataset.names[20]]
