"""Shared test fixtures: where the golden sets of the original implementation live, and where
temporary stores are written."""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tree_copies

# Temporary directories in RAM where there is a tmpfs: the crash and fault tests write thousands
# of small files, each fsynced (the calls and their order are what they check; a test's process
# kills lose nothing the page cache holds, so a disk adds only time). --basetemp or
# PYTEST_DEBUG_TEMPROOT still choose another place.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ and os.access("/dev/shm", os.W_OK | os.X_OK):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = "/dev/shm"

# OpenMP threads that finish a parallel region spin for a while before they sleep: with two test
# processes (and their children) on two cores, the spinning of one takes the CPU the other
# needs (the hybrid and exactness tests ran 2x slower). Set before anything imports torch, and
# inherited by every child; it changes when threads sleep, never what they compute.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_SETS = ["fsq64000", "ema512"]
REAL_STATS = SHARED / "data" / "motionmillion" / "mean_std" / "vector_272"


def golden_info(name: str) -> dict:
    return json.loads((GOLDEN / name / "expected" / "info.json").read_text())


@pytest.fixture(params=GOLDEN_SETS)
def golden(request):
    """(directory, info.json dict) of each golden set."""
    path = GOLDEN / request.param
    if not path.is_dir():
        pytest.fail(f"golden set missing: {path} (tests expect ../shared beside the checkout)")
    return path, golden_info(request.param)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs mount (root only); the test is skipped where mounting is not permitted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(scope="session")
def _made_once():
    """key -> (directory, what its maker returned): the trees made so far in this test process."""
    return {}


@pytest.fixture
def copy_of_made(tmp_path, tmp_path_factory, _made_once):
    """copy_of_made(key, make) -> what make returned: the files `make(directory)` writes, made once
    per test process (per key) and copied into this test's tmp_path, so that a test may change
    them. Building a store costs ~10x copying one on a tmpfs."""
    def copy(key: str, make):
        if key not in _made_once:
            where = tmp_path_factory.mktemp(f"made-{key}")
            _made_once[key] = where, make(where)
        where, made = _made_once[key]
        tree_copies.copy_tree(where, tmp_path)
        return made

    return copy


# Started first, so that with `-n auto` no worker begins one of these as the others run out of
# work (each takes several seconds: real processes, torch imported, or many of them in turn).
SLOW_FIRST = ("torchrun", "killed_at_every_write_step", "spawned", "forkserver", "sigkill",
              "stop_signal", "sigterm", "thousands_of_skips", "disk_full", "hybrid")


def pytest_collection_modifyitems(items):
    def rank(item):  # the slowest kind first; the rest keep their order (the sort is stable)
        return next((k for k, word in enumerate(SLOW_FIRST) if word in item.name), len(SLOW_FIRST))

    items.sort(key=rank)


# Collection imports torch and every test module: ~10^6 objects that are never garbage, whose
# allocation would set off several full collections (~0.5 s of each test process's start).
gc.disable()


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        gc.enable()  # xdist's controller collects nothing: its collector is never turned back on
        if config.args_source == pytest.Config.ArgsSource.TESTPATHS:  # the whole suite
            # one preforked server of each kind for all test processes, importing as they collect
            import preforked

            preforked.share_servers(preforked.subprocess_env())


@pytest.fixture(scope="session", autouse=True)
def _tiny_setup_folder(tmp_path_factory):
    """Where build_helpers.tiny_setup keeps what it made: under this session's base folder,
    which pytest cleans up after later runs even if this one is killed. (Collection imported
    build_helpers where a test uses it: a run without such tests does not import it for this.)"""
    build_helpers = sys.modules.get("build_helpers")
    if build_helpers is None:
        yield
        return
    build_helpers.TINY_MADE_IN = tmp_path_factory.mktemp("tiny-made")
    yield
    shutil.rmtree(build_helpers.TINY_MADE_IN, ignore_errors=True)


def pytest_collection_finish(session):
    """What collection imported is never garbage: out of the collector's sight, a full
    collection during a test costs milliseconds, not ~150 ms. The tests allocate millions of
    short-lived objects (arrays, paths, records) that reference counting frees: the youngest
    generation is collected every 20,000 allocations instead of 700 (~1,400 collections and
    ~1 s of a test process's run before)."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    gc.enable()
