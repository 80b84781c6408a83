"""Creating and committing to a local zarr store: the files written by tokstore
(store/zarr_plain.py) against the same files through zarr-python (the store before), same run.

    python -m benchmarks.zarr_writes [--dir DIR] [--commits 5] [--samples 8 5000 50000]
                                     [--creates 20]

Creation: a new store (its group, a dozen arrays and the first, empty commit), then close; the
median of --creates. Each commit appends N samples of ~100 codes and one caption line, then
commits (fsyncs included). Reported: the median time of each writer and the ratio zarr-python /
tokstore. A build commits every window on small runs (tests, `--commit-every` small) and every
50,000 motions on large ones: both ends are measured.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

from benchmarks.common import Timer, machine
from tokstore import TokenStore
from tokstore.store import zarr_container


def commit_seconds(path: Path, samples: int, commits: int) -> float:
    rng = np.random.default_rng(0)
    seconds = []
    with TokenStore.create(path, 64000) as store:
        for k in range(commits):
            names = [f"clip_{k}_{i:06d}" for i in range(samples)]
            codes = [rng.integers(0, 64000, 100) for _ in names]
            with Timer() as timer:
                store.append(names, codes, [["a person walks forward.\n"]] * samples)
                store.commit()
            seconds.append(timer.seconds)
    return statistics.median(seconds)


def create_seconds(work: Path, creates: int) -> float:
    seconds = []
    for k in range(creates):
        with Timer() as timer:
            TokenStore.create(work / f"new-{k}.zarr", 64000).close()
        seconds.append(timer.seconds)
    return statistics.median(seconds)


def through_zarr_python():
    """Creation and every write through zarr-python, as before zarr_plain."""
    container = zarr_container.ZarrContainer
    return (mock.patch.object(container, "_plain_array", lambda self, name: None),
            mock.patch.object(container, "_create_local", lambda self, arrays:
                              self._create_through_zarr(arrays, overwrite=False)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 5000, 50000])
    parser.add_argument("--creates", type=int, default=20)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tokstore-bench-zarr-", dir=args.dir))
    print(machine())
    print("| what | tokstore writes | zarr-python writes | zarr-python / tokstore |")
    print("|---|---|---|---|")
    try:
        for folder in ("ours", "theirs", "warm"):
            (work / folder).mkdir()
        ours = create_seconds(work / "ours", args.creates)
        plain, create = through_zarr_python()
        with plain, create:
            create_seconds(work / "warm", 1)  # zarr-python's import and event loop: not counted
            theirs = create_seconds(work / "theirs", args.creates)
        print(f"| create a store | {ours * 1e3:.1f} ms | {theirs * 1e3:.1f} ms | "
              f"{theirs / ours:.2f}x |")
        for samples in args.samples:
            ours = commit_seconds(work / f"ours-{samples}.zarr", samples, args.commits)
            plain, create = through_zarr_python()
            with plain, create:
                theirs = commit_seconds(work / f"zarr-{samples}.zarr", samples, args.commits)
            print(f"| commit {samples:,} samples | {ours * 1e3:.1f} ms | {theirs * 1e3:.1f} ms | "
                  f"{theirs / ours:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
