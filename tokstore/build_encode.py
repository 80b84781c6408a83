"""The encode schedule of one rank: its windows of split entries loaded in parallel, encoded in
equal-length batches on pinned one-thread CPU workers (or launched on the device, a hybrid's
rows re-checked on the CPU), and handed back window by window in split order. Also the measured
agreement of an inexact precision with the exact codes.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from vqvae import VQVAE, load_checkpoint
from vqvae.exact import (BatchResult, Checks, DeviceFast, ExactEncoder, ExactnessError, MarginPolicy,
                         PinnedThreads)

from .build_options import EXACT, BuildOptions, BuildSummary
from .provenance import skipped_entry
from .loading import LoadFailure, MotionBatch, iter_batches, load_motion
from .sources import Entry

MARGIN_POLICY = MarginPolicy()
AGREEMENT_SAMPLE = 16  # motions encoded twice to show a reduced precision's agreement with fp32


@dataclass
class RankWork:
    """What rank 0 sends each rank: its windows' entries (or, with nothing to do, the summary)."""

    entries: list[Entry] = field(default_factory=list)
    rounds: int = 0  # windows per rank, the last round padded with nothing
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    done: BuildSummary | None = None
    mode: str = EXACT
    prior_deviation: float = 0.0  # the largest deviation earlier runs on the store measured
    calibration_frames: int = 0
    exceeded: float = 0.0  # set when this rank's exactness check stopped the build


def measure_agreement(options: BuildOptions, model: VQVAE, entries: list[Entry], mean,
                      std) -> dict:
    """How many codes of the first few motions an inexact mode gives as the exact path does."""
    equal = total = 0
    sample = entries[:AGREEMENT_SAMPLE]
    cpu = model if model.device.type == "cpu" else load_checkpoint(options.checkpoint,
                                                                   options.model, "cpu")
    with ExactEncoder(cpu, mean, std) as engine:
        for entry in sample:
            motion = load_motion(entry.motion_path, model.unit_length, engine.mean, engine.std)
            exact = engine.encode_one(motion)
            fast = fast_codes_alone(model, engine, motion, options.precision)
            equal += int((exact == fast).sum())
            total += exact.size
    return {"codes": total, "equal": equal, "share": equal / max(total, 1), "motions": len(sample)}


def fast_codes(model: VQVAE, x: torch.Tensor, precision: str) -> np.ndarray:
    """A batch's codes as this device's kernels compute them at `precision` (no re-check)."""
    return model.encode(x, precision, batch_exact=False).cpu().numpy()


def fast_codes_alone(model: VQVAE, engine: ExactEncoder, motion: np.ndarray,
                     precision: str) -> np.ndarray:
    """One motion's codes (m, D) -> (codes,) as an inexact build computes them: on CPU on one of
    the engine's pinned one-thread workers, as the build encodes; else on the model's device."""
    x = torch.from_numpy(motion)[None]
    if model.device.type == "cpu":
        return engine.threads.submit(fast_codes, model, x, precision).result()[0]
    return fast_codes(model, x.to(model.device), precision)[0]


@dataclass
class EncodedWindow:
    """One window's outcome, in split order: what to append, and what failed to load."""

    names: list[str]
    codes: list[np.ndarray]
    texts: list[list[str]]
    failures: list[dict]
    next_entry: int  # split index just past the window's last entry
    frames: int
    checks: Checks = field(default_factory=Checks)  # the exactness checks of its batches


def encode_windows(model: VQVAE, work: RankWork, options: BuildOptions, device: torch.device,
                   on_batch: Callable[[int, int], None]):
    """This rank's windows, encoded, one EncodedWindow each, in order."""
    entries = work.entries
    done: dict[int, tuple[np.ndarray, list[str]]] = {}
    failures: list[dict] = []
    frames = 0
    checks = Checks()
    items = iter_batches(entries, work.mean, work.std, model.unit_length, options.batch_frames,
                         options.window, options.workers)
    engine = None
    if work.mode == EXACT and device.type == "cpu":
        engine = ExactEncoder(model, work.mean, work.std, torch.get_num_threads(),
                              MARGIN_POLICY, work.prior_deviation)
    elif work.mode == EXACT:  # hybrid: the device decides, the CPU reference re-checks
        reference = load_checkpoint(options.checkpoint, options.model, "cpu")
        engine = ExactEncoder(reference, work.mean, work.std, recheck_threads(),
                              MARGIN_POLICY, work.prior_deviation, fast=DeviceFast(model))
    encoded = encode_batches(items, model, options.precision, device, engine=engine,
                             calibration_frames=work.calibration_frames)
    with engine or nullcontext(), closing(items), closing(encoded):
        try:
            for item, result in encoded:
                if isinstance(item, MotionBatch):
                    done.update(zip(item.entry_ids.tolist(), zip(result.codes, item.texts)))
                    checks = checks.add(result.checks)
                    frames += item.motions.shape[0] * item.motions.shape[1]
                    on_batch(len(result.codes), item.motions.shape[0] * item.motions.shape[1])
                elif isinstance(item, LoadFailure):
                    failures.append(skipped_entry(item.name, item.path, item.reason))
                else:  # WindowEnd: every entry of the window is in `done` or `failures`
                    ids = [i for i in range(item.start, item.stop) if i in done]
                    yield EncodedWindow([entries[i].name for i in ids],
                                        [done[i][0] for i in ids], [done[i][1] for i in ids],
                                        failures, entries[item.stop - 1].index_in_split + 1,
                                        frames, checks)
                    done, failures, frames, checks = {}, [], 0, Checks()
        except ExactnessError as exc:  # recorded, so that a re-run calibrates past it
            work.exceeded = max(work.exceeded, exc.deviation)
            raise ExactnessError(f"{exc} (the samples committed so far passed it; re-running "
                                 "the same command resumes there with the margin widened to "
                                 f"{MARGIN_POLICY.margin_for(exc.deviation):.3g})",
                                 exc.deviation) from None


def encode_batches(items, model: VQVAE, precision: str, device: torch.device,
                   engine: ExactEncoder | None = None, calibration_frames: int = 0):
    """(item, BatchResult of a MotionBatch or None), in the order of `items`.

    With an `engine` (exact mode) every batch goes through it: codes equal to each motion's codes
    alone. Its margin is first calibrated on the multi-row batches (a hybrid's: all batches)
    among the first `calibration_frames` frames (their codes are then the row-by-row ones).

    On CPU every batch is encoded with ONE intra-op thread (vqvae.exact.PinnedThreads), as many
    batches side by side as torch.get_num_threads(): splitting one batch's small convolutions
    across cores scales poorly (and collapses on a busy machine) while whole batches in parallel
    scale almost linearly (the convolutions release the GIL). One thread is also the reference's
    setting: fp32 sums can round their last bit differently with another thread count (the
    original's own codes flip ~1 token in 200,000 between 1 and 2 threads).

    A hybrid engine (on CUDA: ExactEncoder(fast=DeviceFast(model))) launches each batch on the
    device from this thread and re-checks it on the engine's CPU workers; this thread never waits
    for the device except when handing back the oldest batch, in order."""
    items = iter(items)
    if device.type != "cpu" and engine is None:  # inexact on a device: its codes as they come
        yield from _device_batches(items, DeviceFast(model, precision))
        return
    own = engine is None
    threads = PinnedThreads(torch.get_num_threads()) if own else engine.threads
    cores = threads.n
    # batches in flight: 2 per CPU worker; a hybrid's device batches are large, one per worker
    in_flight = 2 * cores if engine is None or engine.fast is None else cores + 2

    def submit(item) -> Future | None:
        if not isinstance(item, MotionBatch):
            return None
        if engine is not None:
            return engine.submit(item.motions)
        fast = threads.submit(fast_codes, model, torch.from_numpy(item.motions), precision)
        return _then(fast, lambda codes: BatchResult(codes, Checks()))

    pending: deque = deque()  # (item, future or None), oldest first
    try:
        if engine is not None and calibration_frames > 0:
            pending.extend(_calibrated(items, engine, calibration_frames, submit))
        for item in items:
            pending.append((item, submit(item)))
            # hand back what is finished, and wait once 2 batches per core queue behind it
            while pending and (pending[0][1] is None or pending[0][1].done()
                               or len(pending) > in_flight):
                item, future = pending.popleft()
                yield item, future.result() if future else None
        while pending:
            item, future = pending.popleft()
            yield item, future.result() if future else None
    finally:
        for _, future in pending:
            if future is not None:
                future.cancel()
        if own:
            threads.close()


def _device_batches(items, fast: DeviceFast, ahead: int = 4):
    """An inexact device build's (item, BatchResult): batches launched up to `ahead` before their
    codes are collected, so that the host waits for the device once per batch, behind it."""
    queue: deque = deque()
    for item in items:
        queue.append((item, fast(item.motions) if isinstance(item, MotionBatch) else None))
        while queue and (queue[0][1] is None or len(queue) > ahead):
            item, collect = queue.popleft()
            yield item, BatchResult(collect().codes.numpy(), Checks()) if collect else None
    while queue:
        item, collect = queue.popleft()
        yield item, BatchResult(collect().codes.numpy(), Checks()) if collect else None


def recheck_threads() -> int:
    """CPU workers for a hybrid build's re-check: this process's share of the machine's cores
    (torchrun's OMP_NUM_THREADS=1 would leave one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _calibrated(items, engine: ExactEncoder, frames: int, submit):
    """The first items, up to `frames` frames of multi-row batches (or 4x that of any), as
    (item, future) pairs: the sample's results come from engine.calibrate, which sets the margin
    every later batch is checked with. A hybrid samples one-row batches too: on the device a row
    alone is as inexact as in a batch (on the CPU it is the reference itself)."""
    head, sample, sampled, seen = [], [], 0, 0
    informative = 0 if engine.fast is not None else 1  # fewer rows than this: nothing to measure
    for item in items:
        head.append(item)
        if isinstance(item, MotionBatch):
            size = item.motions.shape[0] * item.motions.shape[1]
            seen += size
            if len(item.motions) > informative:
                sample.append(len(head) - 1)
                sampled += size
            if sampled >= frames or seen >= 4 * frames:
                break
    results = engine.calibrate([head[i].motions for i in sample])
    calibrated = dict(zip(sample, results))
    out = []
    for i, item in enumerate(head):
        if i in calibrated:
            done: Future = Future()
            done.set_result(calibrated[i])
            out.append((item, done))
        else:
            out.append((item, submit(item)))
    return out


def _then(future: Future, fn: Callable) -> Future:
    """A Future of fn(future's result)."""
    out: Future = Future()

    def finish(f: Future):
        try:
            out.set_result(fn(f.result()))
        except BaseException as exc:  # noqa: BLE001 - handed on to whoever waits on `out`
            out.set_exception(exc)

    future.add_done_callback(finish)
    return out


@contextmanager
def one_intra_op_thread():
    """torch ops on one thread inside; yields the thread count they had (the cores to use).
    torch.set_num_threads is process-global (see vqvae.exact.PinnedThreads): only for scripts
    that run the original loop; the build encodes on PinnedThreads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)
