"""GPU build throughput and exactness, in ONE prepared run on whatever device it finds.

    python -m benchmarks.gpu                  # a GPU: 20,000 motions, width 512 (< 8 min on an H200)
    python -m benchmarks.gpu --device cpu --motions 40 --width 32 --original 8 --agreement 8

Makes a synthetic MotionMillion-layout set (60-300 frames, 272 features, the real statistics) and
a random-weight production-shape model (preset motionmillion at --width), then measures:
(a) the original get-codes loop (benchmarks/baseline.py) on the first --original motions, on the
    device: frames/s;
(b) `tokstore build` end to end (preflight, parallel loading, encoding, store, commit): frames/s,
    the ratio (b)/(a), its exactness mode and re-check figures (rows re-encoded on the CPU);
(c) encode only: the build's batch encoder over batches already in memory: frames/s;
(d) agreement with the CPU exact codes (vqvae.exact, one motion at a time) on the first
    --agreement motions: of the store's codes, and of each precision's raw batched codes
    (fp32, tf32, bf16 on the device, no re-check);
(e) peak GPU memory.
Prints every figure and writes them as JSON (default: gpu.json next to this script).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.baseline import OriginalGetCodes, original_dataset_item
from benchmarks.common import Timer, machine
from tokstore import TokenStore
from tokstore.build import (BATCH_FRAMES, EXACT, MARGIN_POLICY, BuildOptions, build, encode_batches,
                            encode_mode, recheck_threads, resolve_device)
from tokstore.demo import save_random_checkpoint
from tokstore.loading import MotionBatch, iter_batches, load_motion
from tokstore.sources import load_stats, preflight, read_split
from tokstore.synthetic import make_dataset
from vqvae import VQVAEConfig, load_checkpoint
from vqvae.exact import DeviceFast, ExactEncoder

PRECISIONS = ("fp32", "tf32", "bf16")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--motions", type=int, default=20_000)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--original", type=int, default=500, help="motions the original loop encodes")
    parser.add_argument("--agreement", type=int, default=200, help="motions checked against CPU codes")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batch-frames", type=int, default=None, help="default: the build's")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("gpu.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    work = Path(args.dir or tempfile.mkdtemp(prefix="tokstore-bench-gpu-"))
    config = VQVAEConfig.preset("motionmillion", width=args.width, code_dim=args.width,
                                output_emb_width=args.width)
    report: dict = {"machine": machine(), "device": str(device), "motions": args.motions,
                    "width": args.width, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"machine: {report['machine']}; device {device}")

    with Timer() as made:
        dataset = make_dataset(work / "dataset", args.motions, lengths=(60, 300))
        save_random_checkpoint(work / "checkpoint.pth", config)
    layout, checkpoint = dataset.layout, work / "checkpoint.pth"
    names = read_split(layout.split_file)
    entries = preflight(layout, names, config.input_dim, config.unit_length).entries
    frames = sum(e.cropped_frames for e in entries)
    mean, std = load_stats(layout.mean_file, layout.std_file, config.input_dim)
    batch_frames = args.batch_frames or BATCH_FRAMES.get(device.type, 131072)
    report["frames"] = frames
    print(f"data: {len(names)} motions, {frames:,} frames after cropping, written in "
          f"{made.seconds:.0f} s; workers {args.workers}, batch frames {batch_frames}")
    model = load_checkpoint(checkpoint, config, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    # (a) the original loop on a subset, on the device
    subset = entries[:args.original]
    get_codes = OriginalGetCodes(model)
    with Timer() as original_t:
        for entry in subset:
            get_codes(original_dataset_item(np.load(entry.motion_path), mean, std, model.unit_length))
        sync()
    original_frames = sum(e.cropped_frames for e in subset)
    report["original_fps"] = original_frames / original_t.seconds
    print(f"(a) original loop: {len(subset)} motions, {report['original_fps']:,.0f} frames/s")

    # (b) the build end to end
    options = BuildOptions(layout, checkpoint, config, str(work / "store.zarr"), device=str(device),
                           workers=args.workers, batch_frames=batch_frames, progress=False)
    with Timer() as build_t:
        summary = build(options)
    with TokenStore.open(options.store) as store:
        meta = store.meta
        stored = {store.name(i): store.codes(i).copy() for i in range(len(store))}
    report["build_fps"] = summary.frames / build_t.seconds
    report["ratio_vs_original"] = report["build_fps"] / report["original_fps"]
    report["exactness_mode"] = meta.get("exactness_mode")
    report["exactness"] = meta.get("exactness")
    checked = meta.get("exactness") or {}
    print(f"(b) tokstore build: {report['build_fps']:,.0f} frames/s, "
          f"{report['ratio_vs_original']:.1f}x the original loop; codes {report['exactness_mode']}; "
          f"rows re-encoded on the CPU: {checked.get('rows_reencoded', 0)} of {len(stored)} "
          f"(margin {checked.get('margin', 0):.3g})")

    # (c) encode only: the build's batch encoder over batches in memory
    batches = [item for item in iter_batches(entries, mean, std, model.unit_length, batch_frames,
                                             options.window, args.workers)
               if isinstance(item, MotionBatch)]
    exact = encode_mode(device, "fp32") == EXACT
    engine = None
    if exact:  # as the build: on CUDA the device decides and the CPU re-checks (the hybrid)
        engine = ExactEncoder(_cpu(model, checkpoint, config), mean, std, recheck_threads(),
                              fast=DeviceFast(model) if cuda else None)
    try:
        with Timer() as encode_t:
            for _ in encode_batches(batches, model, "fp32", device, engine=engine,
                                    calibration_frames=MARGIN_POLICY.calibration_frames):
                pass
            sync()
    finally:
        if engine is not None:
            engine.close()
    report["encode_only_fps"] = frames / encode_t.seconds
    print(f"(c) encode only: {report['encode_only_fps']:,.0f} frames/s")

    # (d) agreement with the CPU exact codes
    sample = entries[:args.agreement]
    report["agreement"] = agreement(model, checkpoint, config, sample, mean, std, stored)
    for name, found in report["agreement"].items():
        print(f"(d) {name}: {found['equal']}/{found['codes']} codes ({found['share']:.4%}) equal to the "
              f"CPU exact codes, {found['motions_identical']}/{len(sample)} motions identical")

    report["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    if cuda:
        print(f"(e) peak GPU memory: {report['peak_gpu_memory_bytes'] / 2**30:.2f} GiB")
    report["seconds"] = time.perf_counter() - started
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json} ({report['seconds']:.0f} s in all)")
    if args.dir is None:
        shutil.rmtree(work)
    store_exact = report["agreement"]["store"]["motions_identical"] == len(sample)
    return 0 if store_exact or report["exactness_mode"] != EXACT else 1


def _cpu(model, checkpoint, config):
    return model if model.device.type == "cpu" else load_checkpoint(checkpoint, config, "cpu")


def agreement(model, checkpoint, config, sample, mean, std, stored: dict) -> dict:
    """Per source ("store", and each precision's raw batched codes on the device), how many codes
    of `sample` equal the CPU exact path's."""
    with ExactEncoder(_cpu(model, checkpoint, config), mean, std,
                      torch.get_num_threads()) as engine:
        motions = [load_motion(e.motion_path, model.unit_length, engine.mean, engine.std)
                   for e in sample]
        futures = [engine.threads.submit(engine.encode_one, m) for m in motions]
        exact = [f.result() for f in futures]
    found = {"store": [stored[e.name] for e in sample]}
    for precision in PRECISIONS:
        codes = []
        for m in motions:  # one motion a batch: what the precision itself does, no re-check
            x = torch.from_numpy(m)[None].to(model.device)
            codes.append(model.encode(x, precision, batch_exact=False)[0].cpu().numpy())
        found[f"{model.device.type} {precision}"] = codes
    out = {}
    for name, codes in found.items():
        equal = sum(int((np.asarray(c) == e).sum()) for c, e in zip(codes, exact))
        total = sum(e.size for e in exact)
        out[name] = {"codes": total, "equal": equal, "share": equal / max(total, 1),
                     "motions_identical": sum(np.array_equal(c, e) for c, e in zip(codes, exact))}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
