"""What storing an offset array as one chunk would cost at commit time, against today's 512 KiB
chunks (issue 13: single-chunk offsets would let the side-by-side MAP_FIXED map go).

    python -m benchmarks.offset_layout [--samples 2000000] [--commit-every 10000] [--dir DIR]

One int64 offset array grows by --commit-every entries per commit up to --samples entries, each
commit made durable (fsync of what it wrote), three ways:
  chunked   today's zarr layout: 512 KiB chunks; a commit rewrites only the chunks it touches.
  one-chunk a zarr array whose single chunk spans the final length (as if known in advance):
            zarr reads and rewrites that whole chunk at every write.
  one-file  the smallest cost a growing single chunk could have: the file rewritten whole at its
            new length (zarr cannot grow a chunk, so this needs a rechunk per commit).
Reported: seconds for all commits and bytes written. A store has four such arrays (offsets,
name_offsets, sample_lines, and line_offsets with a caption line count per sample, ~2x).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Timer, machine

CHUNK = (1 << 19) // 8


def fsync_tree(folder: Path, names) -> None:
    for name in names:
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def zarr_growth(folder: Path, samples: int, step: int, chunk: int) -> tuple[float, int]:
    import zarr

    array = zarr.create_array(str(folder), shape=(1,), chunks=(chunk,), dtype="<i8",
                              compressors=None, filters=None, fill_value=0)
    array = array.with_config({"write_empty_chunks": True})
    written, end = 0, 1
    rng = np.random.default_rng(0)
    with Timer() as timer:
        while end < samples + 1:
            stop = min(end + step, samples + 1)
            array.resize((stop,))
            array[end:stop] = np.cumsum(rng.integers(30, 151, stop - end))
            first, last = end // chunk, (stop - 1) // chunk
            names = [f"c/{k}" for k in range(first, last + 1)]
            fsync_tree(folder, names + ["zarr.json"])
            written += sum((folder / n).stat().st_size for n in names)
            end = stop
    return timer.seconds, written


def file_rewrite(folder: Path, samples: int, step: int) -> tuple[float, int]:
    folder.mkdir()
    values = np.cumsum(np.random.default_rng(0).integers(30, 151, samples + 1))
    written, end = 0, 1
    with Timer() as timer:
        while end < samples + 1:
            end = min(end + step, samples + 1)
            path = folder / "c"
            with open(path, "wb") as f:
                f.write(values[:end].tobytes())
                f.flush()
                os.fsync(f.fileno())
            written += end * 8
    return timer.seconds, written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--commit-every", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="offset_layout_", dir=args.dir))
    try:
        results = {
            "chunked": zarr_growth(work / "chunked", args.samples, args.commit_every, CHUNK),
            "one-chunk": zarr_growth(work / "one", args.samples, args.commit_every,
                                     args.samples + 1),
            "one-file": file_rewrite(work / "file", args.samples, args.commit_every),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commits = -(-args.samples // args.commit_every)
    print(f"{machine()}; one int64 offset array, {args.samples:,} entries, {commits} commits of "
          f"{args.commit_every:,}")
    print("| layout | seconds, all commits | ms per commit | MB written |")
    print("|---|---|---|---|")
    for kind, (seconds, written) in results.items():
        print(f"| {kind} | {seconds:.2f} | {1000 * seconds / commits:.1f} | "
              f"{written / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
