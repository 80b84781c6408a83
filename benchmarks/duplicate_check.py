"""The writer's duplicate-name check at millions of names: three index designs, same run.

    python -m benchmarks.duplicate_check [--names 2000000] [--batch 10000] [--batch 4096]

Each design answers, for every appended batch of blake2b-64 name hashes, "is any already in the
store?" and then takes the batch in, as StoreWriter.append does:
  runs    sorted runs of (hash, sample) merged LSM-style (the writer before issue 13)
  sorted  one sorted uint64 array of hashes, np.searchsorted for the check, the batch merged in
          at once (np.insert); the owner of a hit is found by a scan, only on a hit
  two     the same, as two sorted arrays: a small recent one each batch is merged into, merged
          into the large one when it passes an eighth of it (the writer since issue 13)
  set     a Python set of the hashes as ints
Reported per design and batch size: seconds for all batches (names/s) and the memory the index
holds at the end plus the peak while adding (tracemalloc, which numpy reports to).
"""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from benchmarks.common import Timer, machine


class Runs:
    def __init__(self):
        self.runs = []

    def check(self, hashes):
        hits = 0
        for sorted_hashes, _ in self.runs:
            first = np.searchsorted(sorted_hashes, hashes, side="left")
            last = np.searchsorted(sorted_hashes, hashes, side="right")
            hits += int(np.count_nonzero(last > first))
        return hits

    def add(self, hashes, first):
        order = np.argsort(hashes, kind="stable")
        run = (hashes[order], first + order)
        while self.runs and len(self.runs[-1][0]) <= 2 * len(run[0]):
            older = self.runs.pop()
            merged = np.concatenate([older[0], run[0]])
            by_hash = np.argsort(merged, kind="stable")
            run = (merged[by_hash], np.concatenate([older[1], run[1]])[by_hash])
        self.runs.append(run)


class Sorted:
    def __init__(self):
        self.hashes = np.zeros(0, np.uint64)

    def check(self, hashes):
        found = np.searchsorted(self.hashes, hashes)
        found = np.minimum(found, len(self.hashes) - 1) if len(self.hashes) else found
        return int(np.count_nonzero(self.hashes[found] == hashes)) if len(self.hashes) else 0

    def add(self, hashes, first):
        batch = np.sort(hashes)
        self.hashes = np.insert(self.hashes, np.searchsorted(self.hashes, batch), batch)


class Two:
    def __init__(self):
        self.large, self.recent = np.zeros(0, np.uint64), np.zeros(0, np.uint64)

    def check(self, hashes):
        hits = 0
        for known in (self.large, self.recent):
            if len(known):
                found = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
                hits += int(np.count_nonzero(known[found] == hashes))
        return hits

    def add(self, hashes, first):
        batch = np.sort(hashes)
        self.recent = np.insert(self.recent, np.searchsorted(self.recent, batch), batch)
        if len(self.recent) > max(1 << 16, len(self.large) // 8):
            self.large = np.insert(self.large, np.searchsorted(self.large, self.recent),
                                   self.recent)
            self.recent = self.recent[:0]


class PySet:
    def __init__(self):
        self.hashes = set()

    def check(self, hashes):
        return sum(h in self.hashes for h in hashes.tolist())

    def add(self, hashes, first):
        self.hashes.update(hashes.tolist())


DESIGNS = {"runs": Runs, "sorted": Sorted, "two": Two, "set": PySet}


def measure(design, hashes: np.ndarray, batch: int) -> dict:
    tracemalloc.start()
    index = design()
    hits = 0
    with Timer() as timer:
        for first in range(0, len(hashes), batch):
            part = hashes[first:first + batch]
            hits += index.check(part)
            index.add(part, first)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert hits == 0, "random 64-bit hashes collided"
    return {"seconds": timer.seconds, "held": held, "peak": peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, action="append")
    args = parser.parse_args(argv)
    hashes = np.random.default_rng(0).integers(0, 2**64, args.names, dtype=np.uint64)
    print(f"{machine()}; {args.names:,} names")
    print("| design | batch | seconds | names/s | MB held | MB peak |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch or [10_000, 4096, 512]:
        for name, design in DESIGNS.items():
            r = measure(design, hashes, batch)
            print(f"| {name} | {batch:,} | {r['seconds']:.2f} | {args.names / r['seconds']:,.0f} | "
                  f"{r['held'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
