"""Commits to a local zarr store: chunk files written by tokstore (store/zarr_plain.py) against
the same writes through zarr-python (the store before), same run, same files.

    python -m benchmarks.zarr_writes [--dir DIR] [--commits 5] [--samples 8 5000 50000]

Each commit appends N samples of ~100 codes and one caption line, then commits (fsyncs
included). Reported: the median commit time of each writer and the ratio zarr-python / tokstore.
A build commits every window on small runs (tests, `--commit-every` small) and every 50,000
motions on large ones: both ends are measured.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 5000, 50000])
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tokstore-bench-zarr-", dir=args.dir))
    print(machine())
    print("| samples per commit | tokstore writes | zarr-python writes | zarr-python / tokstore |")
    print("|---|---|---|---|")
    try:
        for samples in args.samples:
            ours = commit_seconds(work / f"ours-{samples}.zarr", samples, args.commits)
            with mock.patch.object(zarr_container.ZarrContainer, "_plain_array",
                                   lambda self, name: None):
                theirs = commit_seconds(work / f"zarr-{samples}.zarr", samples, args.commits)
            print(f"| {samples:,} | {ours * 1e3:.1f} ms | {theirs * 1e3:.1f} ms | "
                  f"{theirs / ours:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
