"""Throughput of the dataset side of a build: preflight and batched loading, against naive loops.

    python -m benchmarks.sources [--n 3000] [--workers 0 2] [--threads 1 8]

Baselines measured in the same run: for preflight, `np.load` of every motion plus reading every
caption (what checking without header-only reads costs); for loading, the original's loop (one
motion at a time: np.load, crop, normalize). Files are freshly written, so they sit in the page
cache: these are CPU costs, not disk costs. Each figure is the best of --repeat runs (the first
pass of a process pays page faults for fresh memory).
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

from benchmarks.common import Timer, machine
from tokstore.loading import MotionBatch, iter_batches
from tokstore.sources import load_stats, preflight, read_captions, read_split
from vqvae import normalize
from tokstore.synthetic import make_dataset

UNIT = 2  # the production model's unit length (down_t = 1)


def naive_check(layout, names) -> None:
    for name in names:
        np.load(layout.motion_path(name))
        read_captions(layout.text_path(name))


def original_loop(entries, mean, std) -> int:
    frames = 0
    for e in entries:
        motion = np.load(e.motion_path)[:e.cropped_frames]
        frames += len(normalize(motion, mean, std))
    return frames


def loader_pass(entries, mean, std, workers, batch_frames, window) -> int:
    frames = 0
    for item in iter_batches(entries, mean, std, UNIT, batch_frames, window, workers):
        if isinstance(item, MotionBatch):
            frames += item.motions.shape[0] * item.motions.shape[1]
    return frames


def best_seconds(repeat: int, fn, *args):
    """(fastest wall time, result) of `repeat` calls."""
    times = []
    for _ in range(repeat):
        with Timer() as t:
            result = fn(*args)
        times.append(t.seconds)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="synthetic motions (MotionMillion lengths)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="preflight threads")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers")
    ap.add_argument("--batch-frames", type=int, default=65536)
    ap.add_argument("--window", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(machine())
    import torch.utils.data  # noqa: F401  (imported inside iter_batches; keep it out of the timing)
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_dataset(tmp, args.n)
        names = read_split(ds.layout.split_file)
        mean, std = load_stats(ds.layout.mean_file, ds.layout.std_file, 272)

        base, _ = best_seconds(args.repeat, naive_check, ds.layout, names)
        print(f"preflight baseline (np.load + captions): {args.n / base:9,.0f} files/s")
        for threads in args.threads:
            seconds, checked = best_seconds(args.repeat, preflight, ds.layout, names, 272, UNIT,
                                            threads)
            assert checked.ok, checked.problems[:3]
            print(f"preflight, {threads} thread(s):                {args.n / seconds:9,.0f} files/s"
                  f"  x{base / seconds:.1f}")

        entries = checked.entries
        base, frames = best_seconds(args.repeat, original_loop, entries, mean, std)
        print(f"load baseline (one motion at a time):    {args.n / base:9,.0f} files/s"
              f" {frames / base:12,.0f} frames/s")
        for workers in args.workers:
            seconds, got = best_seconds(args.repeat, loader_pass, entries, mean, std, workers,
                                        args.batch_frames, args.window)
            assert got == frames
            print(f"iter_batches, {workers} worker(s):              {args.n / seconds:9,.0f} "
                  f"files/s {frames / seconds:12,.0f} frames/s  x{base / seconds:.2f}")


if __name__ == "__main__":
    main()
