"""Export throughput against the original's merge-into-pickle step, in one run.

    python -m benchmarks.export [--motions N] [--backend zarr|hdf5] [--repeats N]

A store of synthetic FSQ codes shaped like the production tokenizer's output (codes < 64000,
30-150 tokens, 1-3 captions) is written once; its legacy files (code .npy files, caption files,
split) are laid out on disk as the original left them. Then, timed: the original's merge step
(re-read every code and caption file, pickle the dict), tokstore's export-pickle, and export-npy.
The page cache is warm for the baseline's files (the original usually reads a cold network
file system), which favours the baseline.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.common import Timer, machine
from tokstore import TokenStore, legacy

CODEBOOK_SIZE = 64000
VQ_NAME = "VQVAE_codebook_65536_FSQ_all"
SUB_DATASETS = ["humanml", "aist/dance", "idea400", "animation/sub dir"]


def build_store(path: Path, motions: int, backend: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with TokenStore.create(path, CODEBOOK_SIZE, backend=backend,
                           meta={"legacy_code_dtype": "int32"}) as store:
        for start in range(0, motions, 500):
            count = min(500, motions - start)
            names = [f"{SUB_DATASETS[i % len(SUB_DATASETS)]}/clip_{i:07d}"
                     for i in range(start, start + count)]
            codes = [rng.integers(0, CODEBOOK_SIZE, rng.integers(30, 151), dtype=np.int32)
                     for _ in names]
            texts = [[f"a person does motion {i} variant {k}\n" for k in range(rng.integers(1, 4))]
                     for i in range(start, start + count)]
            store.append(names, codes, texts)
        store.commit()


def lay_out_original_files(store, root: Path) -> Path:
    """The dataset root as the original's get-codes step left it: codes, captions, split file."""
    legacy.export_npy(store, root / VQ_NAME, progress=False)
    for index, name in enumerate(store.names):
        text_file = root / "texts" / f"{name}.txt"
        text_file.parent.mkdir(parents=True, exist_ok=True)
        text_file.write_text("".join(store.texts(index)))
    split = root / "split" / "version1" / "t2m_60_300" / "all.txt"
    split.parent.mkdir(parents=True)
    split.write_text("".join(f"{name}\n" for name in store.names))
    return split


def original_merge_into_pickle(root_dir: str, split_file_path: str) -> None:
    """The original's merge step, re-created as it runs: per split line, readlines() of the caption
    file and np.load of the code file, then one pickle.dump of the dict."""
    all_files = open(split_file_path, "r").readlines()
    data_dict = {"text_data": {}, "code_data": {}, "file_names": []}
    for files in tqdm(all_files):
        name = files.strip()
        data_dict["file_names"].append(name)
        text_file_path = os.path.join(root_dir, "texts", name + ".txt")
        code_file_path = os.path.join(root_dir, VQ_NAME, name + ".npy")
        data_dict["text_data"][name] = open(text_file_path, "r").readlines()
        data_dict["code_data"][name] = np.load(code_file_path)
    with open(os.path.join(root_dir, "all_data.pkl"), "wb") as f:
        pickle.dump(data_dict, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motions", type=int, default=2000)
    parser.add_argument("--backend", choices=["zarr", "hdf5"], default="zarr")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (shared disks are noisy)")
    args = parser.parse_args()

    seconds = {"baseline": [], "pickle": [], "npy": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_store(tmp / "store", args.motions, args.backend)
        with TokenStore.open(tmp / "store") as store:
            split = lay_out_original_files(store, tmp / "original")
            for repeat in range(args.repeats):   # interleaved, so that disk noise hits all three
                with Timer() as timer:
                    original_merge_into_pickle(str(tmp / "original"), str(split))
                seconds["baseline"].append(timer.seconds)
                with Timer() as timer:
                    legacy.export_pickle(store, tmp / "all_data.pkl")
                seconds["pickle"].append(timer.seconds)
                with Timer() as timer:
                    legacy.export_npy(store, tmp / f"codes{repeat}")
                seconds["npy"].append(timer.seconds)
        with open(tmp / "original" / "all_data.pkl", "rb") as a, open(tmp / "all_data.pkl", "rb") as b:
            theirs, ours = pickle.load(a), pickle.load(b)
        assert ours["file_names"] == theirs["file_names"] and ours["text_data"] == theirs["text_data"]
        assert all(np.array_equal(ours["code_data"][n], theirs["code_data"][n])
                   for n in ours["file_names"])

    best = {step: min(times) for step, times in seconds.items()}
    print(f"machine: {machine()}")
    print(f"{args.motions} motions, {args.backend} store, best of {args.repeats}")
    for step, label in (("baseline", "original merge-into-pickle (re-reads files)"),
                        ("pickle", "tokstore export-pickle"), ("npy", "tokstore export-npy")):
        print(f"{label:44s}: {args.motions / best[step]:8.0f} motions/s "
              f"({best['baseline'] / best[step]:.2f}x the original's merge)")


if __name__ == "__main__":
    main()
