"""Opening a token store and reading random samples, against the legacy pickle and a raw memmap.

    python -m benchmarks.store_access [--samples N] [--reads R] [--batch B] [--dir DIR] [--keep]

Builds the same synthetic content (N samples, random codes < 64000, 30-150 codes, 1-3 unique
captions each) four ways: a Zarr store and an HDF5 store (through the public append API, B
samples per append + commit), the legacy `all_data.pkl` (int32 (1, T') arrays, as the original
writes it), and a raw uint16 file + int64 offsets read with `np.memmap` (no container at all).
Each is then opened in a fresh process, which reports its open time, its resident memory after
opening, and how many random `store[i].codes` (pickle: `code_data[name]`; memmap:
`codes[offsets[i]:offsets[i+1]]`) it reads per second. "memmap-view" is the floor: the same map
as a plain ndarray sliced with int offsets, no np.memmap subclass and no numpy scalars. Every
file was just written, so all of them read from a warm page cache.

Targets (issue 3): open <= 0.5 s; >= 300,000 samples/s and >= 0.5x the memmap; RSS <= 150 MB.
"""
from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.common import Timer, machine
from tokstore import TokenStore

CODEBOOK_SIZE = 64000
SUB_DATASETS = ["humanml", "aist/dance", "idea400", "animation/sub dir"]
VERBS = ["walks", "runs", "jumps", "turns", "waves", "sits down", "kicks", "dances"]
KINDS = ["zarr", "hdf5", "pickle", "memmap", "memmap-view"]
TARGETS = {"open_s": 0.5, "reads_per_s": 300_000, "vs_memmap": 0.5, "rss_open_mb": 150}


class Content:
    """The synthetic dataset: names, flat codes + offsets; captions made on demand."""

    def __init__(self, samples: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(30, 151, samples)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.codes = rng.integers(0, CODEBOOK_SIZE, int(self.offsets[-1]), dtype=np.uint16)
        self.captions_per_sample = rng.integers(1, 4, samples)
        self.names = [f"{SUB_DATASETS[i % 4]}/clip_{i:07d}" for i in range(samples)]

    def __len__(self):
        return len(self.names)

    def batch(self, start: int, stop: int):
        """names, codes views, caption lines (unique per sample, as real captions are)."""
        codes = [self.codes[self.offsets[i]:self.offsets[i + 1]] for i in range(start, stop)]
        texts = [[f"a person {VERBS[(i + k) % 8]} and then stops, take {i}.{k}#a/DET#0.0#0.0\n"
                  for k in range(self.captions_per_sample[i])] for i in range(start, stop)]
        return self.names[start:stop], codes, texts


def build_store(content: Content, path: Path, backend: str, batch: int) -> float:
    with Timer() as timer:
        with TokenStore.create(path, CODEBOOK_SIZE, backend=backend,
                               meta={"legacy_code_dtype": "int32"}) as store:
            for start in tqdm(range(0, len(content), batch), desc=f"build {backend}", leave=False):
                store.append(*content.batch(start, min(start + batch, len(content))))
                store.commit()
    return timer.seconds


def write_pickle(content: Content, path: Path) -> float:
    """all_data.pkl as the original writes it (see ../shared/spec/legacy-formats.md)."""
    with Timer() as timer:
        text_data, code_data = {}, {}
        for start in range(0, len(content), 100_000):
            names, codes, texts = content.batch(start, min(start + 100_000, len(content)))
            for name, row, lines in zip(names, codes, texts):
                code_data[name] = row.astype(np.int32)[None]
                text_data[name] = lines
        with open(path, "wb") as f:
            pickle.dump({"text_data": text_data, "code_data": code_data,
                         "file_names": list(content.names)}, f)
    return timer.seconds


def write_raw(content: Content, directory: Path) -> float:
    with Timer() as timer:
        directory.mkdir()
        content.codes.tofile(directory / "codes.u16")
        np.save(directory / "offsets.npy", content.offsets)
    return timer.seconds


# ---- the measuring child process ------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, path: str, reads: int) -> dict:
    rss_before = rss_mb()
    start = time.perf_counter()
    if kind in ("zarr", "hdf5"):
        store = TokenStore.open(path)
        n = len(store)
    elif kind == "pickle":
        with open(path, "rb") as f:
            data = pickle.load(f)
        code_data, names = data["code_data"], data["file_names"]
        n = len(names)
    else:
        codes = np.memmap(Path(path) / "codes.u16", dtype=np.uint16, mode="r")
        offsets = np.load(Path(path) / "offsets.npy")
        n = len(offsets) - 1
        if kind == "memmap-view":  # the floor: a plain ndarray over the map, int offsets
            codes = np.asarray(codes)
    open_s = time.perf_counter() - start
    rss_open = rss_mb()

    indices = np.random.default_rng(1).integers(0, n, reads).tolist()
    if kind == "pickle":
        keys = [names[i] for i in indices]
    start = time.perf_counter()
    if kind in ("zarr", "hdf5"):
        for i in indices:
            store[i].codes
    elif kind == "pickle":
        for key in keys:
            code_data[key]
    elif kind == "memmap":
        for i in indices:
            codes[offsets[i]:offsets[i + 1]]
    else:
        for i in indices:
            codes[offsets.item(i):offsets.item(i + 1)]
    seconds = time.perf_counter() - start
    return {"kind": kind, "open_s": open_s, "rss_before_mb": rss_before, "rss_open_mb": rss_open,
            "reads_per_s": reads / seconds, "rss_after_reads_mb": rss_mb()}


def measure_in_child(kind: str, path: Path, reads: int) -> dict:
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "benchmarks.store_access", "--measure", kind,
                          str(path), "--reads", str(reads)], cwd=repo, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report ---------------------------------------------------------------------------------
def report(results: dict, builds: dict, samples: int, reads: int) -> str:
    memmap = results["memmap"]["reads_per_s"]
    lines = [f"{samples:,} samples, {reads:,} random reads, {machine()}, "
             f"{time.strftime('%Y-%m-%d')}",
             "",
             "| kind | build/write s | open s | RSS before open MB | RSS after open MB | "
             "reads/s | x memmap | RSS after reads MB |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        r = results[kind]
        lines.append(f"| {kind} | {builds[kind]:.1f} | {r['open_s']:.3f} | "
                     f"{r['rss_before_mb']:.0f} | {r['rss_open_mb']:.0f} | {r['reads_per_s']:,.0f} | "
                     f"{r['reads_per_s'] / memmap:.2f} | {r['rss_after_reads_mb']:.0f} |")
    lines.append("")
    pickle_result = results["pickle"]
    for kind in ("zarr", "hdf5"):
        r = results[kind]
        checks = {"open_s": r["open_s"] <= TARGETS["open_s"],
                  "reads_per_s": r["reads_per_s"] >= TARGETS["reads_per_s"],
                  "vs_memmap": r["reads_per_s"] / memmap >= TARGETS["vs_memmap"],
                  "rss_open_mb": r["rss_open_mb"] <= TARGETS["rss_open_mb"]}
        verdict = ", ".join(f"{key} {'ok' if ok else 'MISSED'}" for key, ok in checks.items())
        lines.append(f"- {kind}: opens {pickle_result['open_s'] / r['open_s']:,.0f}x faster than "
                     f"the pickle loads, with {pickle_result['rss_open_mb'] / r['rss_open_mb']:.1f}x "
                     f"less memory; reads at {r['reads_per_s'] / pickle_result['reads_per_s']:.2f}x "
                     f"the pickle's dict, {r['reads_per_s'] / memmap:.2f}x the np.memmap slice "
                     f"and {r['reads_per_s'] / results['memmap-view']['reads_per_s']:.2f}x the "
                     f"plain view. "
                     f"Targets: {verdict}.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="samples per append + commit")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to make the work directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files it wrote")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args.reads)))
        return

    work = Path(tempfile.mkdtemp(prefix="store_access_", dir=args.dir))
    try:
        print(f"synthesizing {args.samples:,} samples ...", file=sys.stderr)
        content = Content(args.samples)
        paths = {"zarr": work / "store.zarr", "hdf5": work / "store.h5",
                 "pickle": work / "all_data.pkl", "memmap": work / "raw",
                 "memmap-view": work / "raw"}
        builds = {"zarr": build_store(content, paths["zarr"], "zarr", args.batch),
                  "hdf5": build_store(content, paths["hdf5"], "hdf5", args.batch),
                  "pickle": write_pickle(content, paths["pickle"]),
                  "memmap": write_raw(content, paths["memmap"])}
        builds["memmap-view"] = builds["memmap"]
        del content
        results = {}
        for kind in KINDS:
            print(f"measuring {kind} ...", file=sys.stderr)
            results[kind] = measure_in_child(kind, paths[kind], args.reads)
        print(report(results, builds, args.samples, args.reads))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
