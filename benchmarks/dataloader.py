"""Training dataloader: tokstore.torch.CodeDataset on a store vs the original's all_data.pkl loader
and a plain numpy memmap floor.

    python -m benchmarks.dataloader [--samples 1000000] [--batches 1000] [--batch-size 64]
                                    [--repeat 3] [--no-epoch] [--dir DIR]

All sides hold the same content (random FSQ codes < 64000, 30-150 codes, 1-3 captions) and run
a DataLoader with 4 forked workers, shuffled, the collate in the workers, in a fresh process each,
and all build MotionMillion's rows ([pad] * text_tokens_len + codes + [end] + pads to 301, with
text_tokens_len 1 as for CLIP; the drop-one augmentation on):
  legacy  unpickles all_data.pkl whole in the dataset constructor and keeps the captions of every
          name in dicts, as MotionMillion's Text2MotionDataset_motionmillion does, building each
          row in __getitem__ as it does (its text encoder left out); the workers inherit it all.
  floor   the same data as plain .npy files opened with np.load(mmap_mode="r") (flat codes, offsets,
          caption bytes and line offsets), read per item, collated by tokstore's collate.
  store   CodeDataset over the store (names not decoded: no side returns them), read a batch
          at a time through __getitems__, the same collate; each worker opens the store itself.
Measured: time from constructing the dataset to the first batch (the best of --repeat runs),
samples/s over --batches batches after it, and the memory of the main process and its workers
(PSS from /proc/PID/smaps_rollup, summed, so pages the processes share count once) after those
batches and again one batch before the end of the epoch (the legacy workers' copy-on-write
copies grow as they touch more of the inherited objects); and name lookups/s of the store
(TokenStore.index_of, no dict) beside a dict of every name. Every DDP rank repeats each side.
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
TEXT_SLOTS = 1            # text_tokens_len of one CLIP feature
SIDES = ("legacy", "floor", "store")
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

    from tokstore.torch import plain_captions

    text_data, code_data, file_names = {}, {}, []
    floor = {"codes": [], "lengths": [], "text": [], "line_lengths": [], "line_counts": [],
             "keep": []}
    seconds = {}
    with Timer() as t:
        with TokenStore.create(directory / "codes.zarr", CODEBOOK_SIZE,
                               meta={"legacy_code_dtype": "int32"}) as store:
            for names, codes, texts in tqdm(content(samples), total=-(-samples // 20000),
                                            desc="store + pickle + floor content",
                                            file=sys.stderr):
                store.append(names, codes, texts)
                for name, row, lines in zip(names, codes, texts):
                    code_data[name] = row[None, :]
                    text_data[name] = lines
                    encoded = [line.encode("utf-8") for line in lines]
                    floor["text"].append(b"".join(encoded))
                    floor["line_lengths"] += [len(line) for line in encoded]
                    floor["line_counts"].append(len(lines))
                    floor["keep"].append(bool(plain_captions(lines)))
                floor["codes"] += [row.astype(np.uint16) for row in codes]
                floor["lengths"] += [len(row) for row in codes]
                file_names.extend(names)
            store.commit()
    seconds["write_store_and_content"] = t.seconds
    with Timer() as t:
        write_floor(directory / "floor", floor)
    seconds["write_floor"] = t.seconds
    with Timer() as t:
        with open(directory / "all_data.pkl", "wb") as f:
            pickle.dump({"text_data": text_data, "code_data": code_data,
                         "file_names": file_names}, f, protocol=pickle.HIGHEST_PROTOCOL)
    seconds["write_pickle"] = t.seconds
    return seconds


def write_floor(directory: Path, parts: dict) -> None:
    """The floor's files: flat arrays and offsets, as anyone would lay them out with numpy."""
    directory.mkdir(exist_ok=True)
    def offsets(lengths):
        return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    np.save(directory / "codes.npy", np.concatenate(parts["codes"]))
    np.save(directory / "offsets.npy", offsets(parts["lengths"]))
    np.save(directory / "text.npy", np.frombuffer(b"".join(parts["text"]), dtype=np.uint8))
    np.save(directory / "line_offsets.npy", offsets(parts["line_lengths"]))
    np.save(directory / "sample_lines.npy", offsets(parts["line_counts"]))
    np.save(directory / "keep.npy", np.flatnonzero(parts["keep"]))


class FloorDataset:
    """Plain numpy memmaps of the same data, read one item at a time: codes sliced, the sample's
    caption lines decoded, stripped, one drawn (per-worker generator, like CodeDataset)."""

    def __init__(self, directory: Path):
        def load(name):
            return np.load(directory / f"{name}.npy", mmap_mode="r")
        self.codes, self.offsets, self.text = load("codes"), load("offsets"), load("text")
        self.line_offsets, self.sample_lines = load("line_offsets"), load("sample_lines")
        self.keep = load("keep")
        self.rng = None

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, item):
        import torch

        from tokstore.torch import CodeItem, plain_captions

        if self.rng is None:
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng(info.seed if info else 0)
        i = int(self.keep[item])
        codes = torch.from_numpy(self.codes[self.offsets[i]:self.offsets[i + 1]].astype(np.int64))
        first, last = self.sample_lines[i], self.sample_lines[i + 1]
        bounds = self.line_offsets[first:last + 1].tolist()
        raw = self.text[bounds[0]:bounds[-1]].tobytes()
        lines = [raw[a - bounds[0]:b - bounds[0]].decode("utf-8") for a, b in zip(bounds, bounds[1:])]
        captions = plain_captions(lines)
        return CodeItem(codes, captions[int(self.rng.random() * len(captions))], None)


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
        count, text_tokens_len = codes.shape[0], TEXT_SLOTS
        pieces = [torch.full((text_tokens_len,), self.pad), codes.long(), self.end]
        if count + 1 < BLOCK_SIZE - text_tokens_len:
            pieces.append(torch.full((BLOCK_SIZE - text_tokens_len - 1 - count,), self.pad))
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

    from tokstore.torch import CodeCollator, CodeDataset

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if side == "legacy":
        dataset, collate = LegacyDataset(directory / "all_data.pkl"), legacy_collate
    elif side == "floor":
        dataset = FloorDataset(directory / "floor")
        collate = CodeCollator(CODEBOOK_SIZE, CODEBOOK_SIZE + 1, block_size=BLOCK_SIZE,
                               augment=True, seed=0, text_slots=TEXT_SLOTS)
    else:
        dataset = CodeDataset(directory / "codes.zarr", seed=0, names=False)
        collate = dataset.collator(block_size=BLOCK_SIZE, augment=True, text_slots=TEXT_SLOTS)
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
    """Each side in fresh interpreters, so that none inherits another's memory. The first run
    reads memory (to the epoch's end); --repeat runs in all time the first batch and the
    throughput, and the best of each counts (this box is shared and noisy)."""
    def run(epoch):
        command = [sys.executable, "-m", "benchmarks.dataloader", "--side", side,
                   "--dir", str(directory), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size)] + ([] if epoch else ["--no-epoch"])
        out = subprocess.run(command, check=True, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return json.loads(out.stdout.strip().splitlines()[-1])

    runs = [run(not args.no_epoch)] + [run(False) for _ in range(args.repeat - 1)]
    return {**runs[0], "first_batch_s": min(r["first_batch_s"] for r in runs),
            "samples_per_s": max(r["samples_per_s"] for r in runs),
            "samples_per_s_runs": [round(r["samples_per_s"]) for r in runs]}


def lookups(directory: Path, count: int = 200_000) -> dict:
    """Name lookups/s of the store (no dict) and of a dict of every name, in this process."""
    from tokstore import TokenStore

    with TokenStore.open(directory / "codes.zarr") as store:
        rng = np.random.default_rng(1)
        with Timer() as first:
            store.index_of("set0/motion_0000000")   # builds the sorted-hash index
        names = [f"set{k % 8}/motion_{k:07d}" for k in rng.integers(0, len(store), count)]
        with Timer() as t:
            for name in names:
                store.index_of(name)
        index = {name: i for i, name in enumerate(store.names)}
        with Timer() as d:
            for name in names:
                index[name]
        before = searchsorted_lookup(store)
        with Timer() as b:
            for name in names:
                before(name)
    return {"store": count / t.seconds, "dict": count / d.seconds, "before": count / b.seconds,
            "first_s": first.seconds}


def searchsorted_lookup(store):
    """The lookup tokstore had before issue 12, re-stated as a baseline: blake2b through
    format.name_hashes, two np.searchsorted, the candidate's name decoded and compared."""
    from tokstore.store.format import name_hashes

    hashes = name_hashes([n.encode("utf-8") for n in store.names])   # what the store holds
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]

    def lookup(name):
        target = name_hashes([name.encode("utf-8")])[0]
        first = np.searchsorted(ordered, target, side="left")
        last = np.searchsorted(ordered, target, side="right")
        for position in range(first, last):
            if store[int(order[position])].name == name:
                return int(order[position])
        raise KeyError(name)
    return lookup


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=1000, help="batches timed (at least 1)")
    parser.add_argument("--no-epoch", action="store_true",
                        help="read memory only after the timed batches, not again near the end "
                             "of the epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (best counts)")
    parser.add_argument("--dir", type=Path, help="keep the inputs here (default: a temp dir)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:           # one side, in a child process
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
        results = {side: run_side(side, directory, args) for side in SIDES}
        names = lookups(directory)
    legacy, floor, store = (results[side] for side in SIDES)

    drawn = store["batches_drawn"]
    print(f"{args.samples} samples ({store['samples']} with captions), {WORKERS} forked workers, "
          f"batch {args.batch_size}, samples/s over {args.batches} batches after the first "
          f"(best of {args.repeat} runs)")
    print(f"{'':8} {'first batch':>12} {'samples/s':>10}   memory (PSS) main + workers after "
          f"{drawn[0]} / {drawn[1]} batches")
    for r in (legacy, floor, store):
        print(f"{r['side']:8} {r['first_batch_s']:>10.2f} s {r['samples_per_s']:>10.0f}   " +
              " / ".join(f"{total(m) / 2**20:.0f} MiB ({m['main'] / 2**20:.0f} + "
                         f"{m['workers'] / 2**20:.0f}, anonymous {m['anon'] / 2**20:.0f})"
                         for m in (r["early"], r["late"])) +
              f"   runs {r['samples_per_s_runs']}")
    print(f"name lookups/s: store {names['store']:,.0f} (first lookup {names['first_s']:.2f} s, "
          f"builds the index), dict of every name {names['dict']:,.0f}, the searchsorted "
          f"lookup of before {names['before']:,.0f} ({names['store'] / names['before']:.1f}x)")
    ratios = [("first batch sooner than legacy", legacy["first_batch_s"] / store["first_batch_s"],
               20),
              (f"memory smaller than legacy after {drawn[0]} batches",
               total(legacy["early"]) / total(store["early"]), 5),
              (f"memory smaller than legacy after {drawn[1]} batches",
               total(legacy["late"]) / total(store["late"]), 5),
              ("throughput vs the memmap floor", store["samples_per_s"] / floor["samples_per_s"],
               1.0),
              ("throughput vs legacy", store["samples_per_s"] / legacy["samples_per_s"], 1.0)]
    for what, ratio, target in ratios:
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{what}: {ratio:.2f}x ({verdict} target >= {target}x)")
    print(f"name lookups: {names['store']:,.0f}/s ("
          f"{'meets' if names['store'] >= 300_000 else 'MISSES'} target >= 300,000/s)")
    print("Every DDP rank repeats all of this. The store side's memory beyond its anonymous "
          "part is\nmostly the store's files, mapped: page cache, shared by every rank on the "
          "machine.")


def total(memory_reading: dict) -> int:
    return memory_reading["main"] + memory_reading["workers"]


if __name__ == "__main__":
    main()
