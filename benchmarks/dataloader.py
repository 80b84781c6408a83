"""Training dataloader: tokstore.torch.CodeDataset on a store vs the original's all_data.pkl loader.

    python -m benchmarks.dataloader [--samples 500000] [--batches 200] [--batch-size 256]
                                    [--repeat 3] [--no-epoch] [--dir DIR]

Both sides hold the same content (random FSQ codes < 64000, 30-150 codes, 1-3 captions) and run
a DataLoader with 4 forked workers, shuffled, the collate in the workers, in a fresh process each:
  legacy  unpickles all_data.pkl whole in the dataset constructor and keeps the captions of every
          name in dicts, as MotionMillion's Text2MotionDataset_motionmillion does (its text encoder
          left out); the workers inherit it all and touch it as they read.
  store   CodeDataset over the store; each worker opens the store itself.
Measured: time from constructing the dataset to the first batch (the best of --repeat runs),
samples/s over --batches batches after it, and the memory of the main process and its workers
(PSS from /proc/PID/smaps_rollup, summed, so pages the processes share count once) after those
batches and again one batch before the end of the epoch (the legacy workers' copy-on-write
copies grow as they touch more of the inherited objects). Every DDP rank repeats either side.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Timer, machine

CODEBOOK_SIZE = 64000
BLOCK_SIZE = 301          # MotionMillion's max_motion_length
WORKERS = 4
WORDS = ("walks", "runs", "jumps", "turns left", "waves", "sits down", "kicks", "crouches",
         "spins", "stumbles", "dances", "climbs", "throws a ball", "bows", "stretches")
MANNERS = ("slowly", "quickly", "happily", "carefully", "twice", "in a circle", "backwards", "")


# --------------------------------------------------------------------------- content

def content(samples: int, seed: int = 0, chunk: int = 20000):
    """Yield (names, codes, texts) chunks. About 1 in 200 samples has no caption lines and 1 in
    10 a trailing blank line, so both loaders have something to drop and to strip."""
    rng = np.random.default_rng(seed)
    for first in range(0, samples, chunk):
        count = min(chunk, samples - first)
        lengths = rng.integers(30, 151, size=count)
        flat = rng.integers(0, CODEBOOK_SIZE, size=int(lengths.sum()), dtype=np.int32)
        codes = np.split(flat, np.cumsum(lengths)[:-1])
        names = [f"set{k % 8}/motion_{k:07d}" for k in range(first, first + count)]
        texts = []
        for k in range(count):
            draw = rng.integers(0, 1000, size=8)
            if draw[0] < 5:
                texts.append([])
                continue
            lines = [f"a person {WORDS[draw[2 + j] % len(WORDS)]} "
                     f"{MANNERS[draw[5 + j] % len(MANNERS)]} then stops.\n"
                     for j in range(1 + draw[1] % 3)]
            texts.append(lines + ["\n"] if draw[0] % 10 == 0 else lines)
        yield names, codes, texts


def write_inputs(directory: Path, samples: int) -> dict:
    """The store (zarr) and all_data.pkl with the same content; seconds taken by each."""
    from tqdm import tqdm

    from tokstore import TokenStore

    text_data, code_data, file_names = {}, {}, []
    seconds = {}
    with Timer() as t:
        with TokenStore.create(directory / "codes.zarr", CODEBOOK_SIZE,
                               meta={"legacy_code_dtype": "int32"}) as store:
            for names, codes, texts in tqdm(content(samples), total=-(-samples // 20000),
                                            desc="store + pickle content", file=sys.stderr):
                store.append(names, codes, texts)
                for name, row, lines in zip(names, codes, texts):
                    code_data[name] = row[None, :]
                    text_data[name] = lines
                file_names.extend(names)
            store.commit()
    seconds["write_store_and_content"] = t.seconds
    with Timer() as t:
        with open(directory / "all_data.pkl", "wb") as f:
            pickle.dump({"text_data": text_data, "code_data": code_data,
                         "file_names": file_names}, f, protocol=pickle.HIGHEST_PROTOCOL)
    seconds["write_pickle"] = t.seconds
    return seconds


# --------------------------------------------------------------------------- the legacy loader

class LegacyDataset:
    """The original training dataset as far as codes and captions go (no text encoder)."""

    def __init__(self, pickle_path: Path):
        import torch

        with open(pickle_path, "rb") as f:
            all_data = pickle.load(f)   # the original's way: this run wrote the file itself
        self.data, self.names = {}, []
        for name in all_data["file_names"]:
            lines = all_data["text_data"][name]
            if len(lines) == 0:
                continue
            self.data[name] = {"m_token_list": all_data["code_data"][name],
                               "text": [{"caption": line.strip()} for line in lines
                                        if line.strip()]}
            self.names.append(name)
        self.end = torch.tensor([CODEBOOK_SIZE])
        self.pad = CODEBOOK_SIZE + 1

    def __len__(self):
        return len(self.names)

    def __getitem__(self, item):
        import torch

        entry = self.data[self.names[item]]
        codes = torch.tensor(random.choice(entry["m_token_list"]))
        caption = random.choice(entry["text"])["caption"]
        if np.random.choice([False, False, True]):
            codes = codes[:-1] if np.random.choice([True, False]) else codes[1:]
        count = codes.shape[0]
        pieces = [codes.long(), self.end]
        if count + 1 < BLOCK_SIZE:
            pieces.append(torch.full((BLOCK_SIZE - 1 - count,), self.pad))
        return caption, torch.cat(pieces), torch.tensor(count)


def legacy_collate(batch):
    import torch

    captions, tokens, lengths = zip(*batch)
    return list(captions), torch.stack(tokens), torch.stack(lengths)


# --------------------------------------------------------------------------- one side, measured

def pss_bytes(pid: int) -> tuple[int, int]:
    """(PSS, its anonymous part) of a process: the rest is mapped files, e.g. the store's."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Pss_Anon"):
                values[key] = int(rest.split()[0]) * 1024
    return values["Pss"], values["Pss_Anon"]


def child_pids() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def measure(side: str, directory: Path, batches: int, batch_size: int, epoch: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from tokstore.torch import CodeDataset

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if side == "legacy":
        dataset, collate = LegacyDataset(directory / "all_data.pkl"), legacy_collate
    else:
        dataset = CodeDataset(directory / "codes.zarr", seed=0)
        collate = dataset.collator(block_size=BLOCK_SIZE, augment=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=WORKERS,
                        collate_fn=collate, drop_last=True, generator=generator,
                        multiprocessing_context="fork")
    # Both sides alike, and not timed: collect what construction left, then keep the collector
    # of every process from walking (so copying) the objects the workers share with the main
    # process, as the gc.freeze docs advise before forking. It spares the legacy side more.
    with Timer() as collecting:
        gc.collect()
        gc.freeze()
    batches_in = iter(loader)
    next(batches_in)
    first_batch = time.perf_counter() - start - collecting.seconds
    if batches == 0:
        return {"first_batch_s": first_batch}
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_in)
    seconds = time.perf_counter() - start
    early = memory()        # after --batches: as far as the throughput was timed
    rest = len(loader) - 2 - batches if epoch else 0   # the workers end with the epoch's last
    for _ in range(rest):
        next(batches_in)
    return {"side": side, "samples": len(dataset), "first_batch_s": first_batch,
            "samples_per_s": batches * batch_size / seconds, "early": early, "late": memory(),
            "batches_drawn": [batches + 1, batches + 1 + rest]}


def memory() -> dict:
    """PSS of this process and of its DataLoader workers, in bytes."""
    main, workers = pss_bytes(os.getpid()), [pss_bytes(pid) for pid in child_pids()]
    return {"main": main[0], "workers": sum(w[0] for w in workers),
            "anon": main[1] + sum(w[1] for w in workers), "count": len(workers)}


def run_side(side: str, directory: Path, args) -> dict:
    """Each side in fresh interpreters, so that neither inherits the other's memory. The first
    batch is timed --repeat times (the quickest counts: this box is shared and noisy)."""
    def run(batches):
        command = [sys.executable, "-m", "benchmarks.dataloader", "--side", side,
                   "--dir", str(directory), "--batches", str(batches),
                   "--batch-size", str(args.batch_size)] + (["--no-epoch"] if args.no_epoch else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = run(args.batches)
    firsts = [result["first_batch_s"]] + [run(0)["first_batch_s"] for _ in range(args.repeat - 1)]
    result["first_batch_s"] = min(firsts)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--batches", type=int, default=200, help="batches timed (at least 1)")
    parser.add_argument("--no-epoch", action="store_true",
                        help="read memory only after the timed batches, not again near the end "
                             "of the epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs timing the first batch")
    parser.add_argument("--dir", type=Path, help="keep the inputs here (default: a temp dir)")
    parser.add_argument("--side", choices=["legacy", "store"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:           # one side, in a child process; --batches 0 times the first batch only
        print(json.dumps(measure(args.side, args.dir, args.batches, args.batch_size,
                                 not args.no_epoch)))
        return
    if args.batches < 1 or args.repeat < 1:
        parser.error("--batches and --repeat must be at least 1")

    print(machine())
    with tempfile.TemporaryDirectory(prefix="tokstore-dataloader-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "all_data.pkl").exists():
            for what, seconds in write_inputs(directory, args.samples).items():
                print(f"{what}: {seconds:.1f} s")
        print(f"all_data.pkl: {(directory / 'all_data.pkl').stat().st_size / 2**20:.0f} MiB")
        legacy = run_side("legacy", directory, args)
        store = run_side("store", directory, args)

    drawn = store["batches_drawn"]
    print(f"{args.samples} samples ({store['samples']} with captions), {WORKERS} forked workers, "
          f"batch {args.batch_size}, samples/s over {args.batches} batches after the first")
    print(f"{'':8} {'first batch':>12} {'samples/s':>10}   memory (PSS) main + workers after "
          f"{drawn[0]} / {drawn[1]} batches")
    for r in (legacy, store):
        print(f"{r['side']:8} {r['first_batch_s']:>10.2f} s {r['samples_per_s']:>10.0f}   " +
              " / ".join(f"{total(m) / 2**20:.0f} MiB ({m['main'] / 2**20:.0f} + "
                         f"{m['workers'] / 2**20:.0f}, anonymous {m['anon'] / 2**20:.0f})"
                         for m in (r["early"], r["late"])))
    ratios = {"first batch sooner": legacy["first_batch_s"] / store["first_batch_s"],
              f"memory smaller after {drawn[0]} batches":
                  total(legacy["early"]) / total(store["early"]),
              f"memory smaller after {drawn[1]} batches":
                  total(legacy["late"]) / total(store["late"]),
              "throughput": store["samples_per_s"] / legacy["samples_per_s"]}
    targets = {"first": 20, "memory": 5, "throughput": 1}
    for what, ratio in ratios.items():
        target = targets[what.split()[0]]
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{what}: {ratio:.1f}x ({verdict} target >= {target}x)")
    print("Every DDP rank repeats all of this. The store side's memory beyond its anonymous "
          "part is\nmostly the store's files, mapped: page cache, shared by every rank on the "
          "machine.")


def total(memory_reading: dict) -> int:
    return memory_reading["main"] + memory_reading["workers"]


if __name__ == "__main__":
    main()
