"""The one exact-encode path: codes equal to the original get-codes step's, by construction.

The original encodes one motion at a time, on CPU, in float32, after `(motion - mean) / std` in
numpy with the statistics' own dtypes. Its codes are the reference. Encoding a batch is faster but
kernels may round a batch's last bit differently (and so may another intra-op thread count), which
flips a token lying very near a decision boundary. `ExactEncoder` makes batched codes equal the
reference:

- normalization: `normalize` with the statistics as loaded (numpy promotion, as the original);
- threads: every encode runs on a `PinnedThreads` worker, ONE intra-op thread, like the reference;
- near-boundary re-check: each token's slack (how far its decision variables may move before its
  code changes, vqvae.model.Decision) is compared with a margin; a row with a token within it is
  encoded again alone, as the original encodes it, and those codes are kept;
- the margin is calibrated per checkpoint and machine: sample batches are encoded batched and row
  by row, the largest deviation of the decision variables is measured, and the margin is
  `safety` times that (never below `floor`). Every re-encoded row measures the deviation again;
  one above `stop_fraction` of the margin means the calibration was too small, and encoding stops
  with ExactnessError rather than keep codes it cannot vouch for.
"""
from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import VQVAEError
from .model import VQVAE, Decision
from .normalize import normalize


class ExactnessError(VQVAEError):
    """Codes could not be shown equal to the original's (the calibrated margin proved too small,
    or torch could not be held to one intra-op thread)."""

    def __init__(self, message: str, deviation: float = float("nan")):
        super().__init__(message)
        self.deviation = deviation


@dataclass(frozen=True)
class MarginPolicy:
    """How the near-boundary margin is set. Deviations are in decision-variable units: FSQ's
    bounded value (rounding boundaries 1 apart), the codebook search's |dx| / |x|."""

    safety: float = 10.0  # margin = safety x the largest deviation measured at calibration
    floor: float = 1e-5  # never below: random weights at width 512 measured 2.2e-6 (FSQ)
    stop_fraction: float = 0.5  # a re-encoded row moving more than this x margin stops encoding
    default: float = 5e-5  # used until (or without) a calibration
    calibration_frames: int = 16384  # frames of multi-row batches a build calibrates on

    def margin_for(self, deviation: float) -> float:
        return max(self.floor, self.safety * deviation)


@dataclass
class Checks:
    """What calibration and the re-check found. Counts add up, deviations take the maximum."""

    margin: float = 0.0  # the largest margin used
    measured_deviation: float = 0.0  # largest deviation at calibration (batched vs alone)
    calibration_rows: int = 0
    calibration_tokens: int = 0
    rows_reencoded: int = 0  # rows re-encoded alone because a token lay within the margin
    tokens_changed: int = 0  # codes that re-encoding changed (calibration rows included)
    max_reencode_deviation: float = 0.0  # the largest deviation a re-encoded row showed

    def add(self, other: Checks) -> Checks:
        """self + other, as a new Checks."""
        merged = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            merged[f.name] = max(a, b) if isinstance(a, float) else a + b
        return Checks(**merged)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Checks:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})


@dataclass
class BatchResult:
    codes: np.ndarray  # (B, T') in the model's code dtype: each row the codes it gets alone
    checks: Checks


# torch's intra-op thread count is process state: PinnedThreads change it only under this lock
_THREAD_SETTING = threading.Lock()


class PinnedThreads:
    """Worker threads whose torch ops each run on ONE intra-op thread, without leaving the
    process's thread setting changed.

    What torch forces (OpenMP backend, as the CPU wheels ship): `torch.set_num_threads` stores a
    process-wide count and sets the calling thread's OpenMP/MKL count; every other thread copies
    the process-wide count the first time it touches torch's thread pool and keeps it for life
    (a later set_num_threads does not reach it). So the only way to give a thread one intra-op
    thread is to change the global for a moment: here the count is set to 1, the `n` workers are
    started and each reads its count (which fixes it at 1), then the count is restored (all in a
    fresh helper thread, whose count is the process-wide one), before the constructor returns
    (about a millisecond). Only a host thread that touches torch for the first time inside that
    window would keep one thread. If a worker still sees more than one thread afterwards (another
    threading backend), the constructor keeps the global at 1 until close() instead, the only
    other way to be exact, and says so in `held_globally`."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError("PinnedThreads needs at least one thread")
        self.n = n
        self.held_globally = False
        self._restore_to: int | None = None
        with _THREAD_SETTING:  # two windows at once would restore each other's 1
            # the window runs in a fresh thread: its count is the process-wide one (the calling
            # thread's own may differ, if it first used torch before the setting last changed),
            # and set_num_threads there leaves the calling thread's count alone
            window = ThreadPoolExecutor(1, thread_name_prefix="vqvae-exact-window")
            try:
                self._pool, before = window.submit(self._start_workers, n).result()
            finally:
                window.shutdown()
            seen = {self._pool.submit(torch.get_num_threads).result() for _ in range(n)}
            if seen != {1}:
                self.held_globally = True
                self._restore_to = before
                torch.set_num_threads(1)

    @staticmethod
    def _start_workers(n: int) -> tuple[ThreadPoolExecutor, int]:
        """In a fresh thread: set the count to 1, start `n` workers (each fixes its count at 1),
        restore the process-wide count; (the pool, that count)."""
        before = torch.get_num_threads()
        started = threading.Barrier(n + 1)
        torch.set_num_threads(1)
        try:
            pool = ThreadPoolExecutor(n, thread_name_prefix="vqvae-exact",
                                      initializer=torch.get_num_threads)
            waits = [pool.submit(started.wait) for _ in range(n)]  # every worker exists
            started.wait()
            for wait in waits:
                wait.result()
        finally:
            torch.set_num_threads(before)
        return pool, before

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._restore_to is not None:
            with _THREAD_SETTING:
                torch.set_num_threads(self._restore_to)
            self._restore_to = None

    def __enter__(self) -> PinnedThreads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def in_one_thread() -> bool:
    """Whether torch ops in the calling thread run on one intra-op thread."""
    return torch.get_num_threads() == 1


class ExactEncoder:
    """Codes equal to the original's for each motion alone (CPU, fp32, one intra-op thread),
    from batches. `model` is the reference: a VQVAE on the CPU. `mean`/`std` (optional) are the
    statistics in their own dtypes, for `normalize`. `threads`: a PinnedThreads to run on (shared
    with the caller), or a worker count for one of its own (closed with the encoder).
    `prior_deviation`: the largest deviation an earlier run on this store measured: the margin
    never goes below what it implies.

    `fast` (hybrid): a faster inexact encoder, called in the submitting thread with a batch and
    returning a function that yields its Decision on the host (e.g. DeviceFast: a GPU). Then every
    batch is decided by `fast` and re-checked by the reference on the pinned CPU workers (every
    token within the margin, which is calibrated fast-vs-reference), overlapping the fast one."""

    def __init__(self, model: VQVAE, mean=None, std=None, threads: PinnedThreads | int = 1,
                 policy: MarginPolicy = MarginPolicy(), prior_deviation: float = 0.0,
                 fast: Callable[[np.ndarray], Callable[[], Decision]] | None = None):
        if model.device.type != "cpu":
            raise VQVAEError(f"the exact reference runs on the CPU; the model is on {model.device}")
        self.model, self.policy = model, policy
        self.mean = None if mean is None else np.asarray(mean)
        self.std = None if std is None else np.asarray(std)
        self._own_threads = not isinstance(threads, PinnedThreads)
        self.threads = PinnedThreads(threads) if self._own_threads else threads
        self._lock = threading.Lock()
        self._prior = float(prior_deviation)
        self._margin: float | None = policy.margin_for(self._prior) if self._prior else None
        self.checks = Checks()
        self.fast = fast

    # ---- normalization and the reference ------------------------------------------------------

    def normalize(self, motion, out: np.ndarray | None = None) -> np.ndarray:
        """(T, D) motion -> float32, `(motion - mean) / std` with numpy's promotion of the
        on-disk dtypes, as the original's dataset computes it."""
        if self.mean is None or self.std is None:
            raise VQVAEError("this ExactEncoder was made without statistics")
        return normalize(motion, self.mean, self.std, out)

    def reference(self, x) -> Decision:
        """One motion ((m, D) or (1, m, D), normalized) as the original encodes it: alone, CPU
        fp32, one intra-op thread. Runs on a pinned worker unless the caller is on one thread."""
        x = torch.as_tensor(x)
        if x.ndim == 2:
            x = x[None]
        if len(x) != 1:
            raise VQVAEError(f"the reference encodes one motion at a time, got a batch of {len(x)}")
        if in_one_thread():
            return self.model.decide(x)
        return self.threads.submit(self.model.decide, x).result()

    def encode_one(self, x) -> np.ndarray:
        """The reference's codes for one normalized motion, (m / unit,) numpy."""
        return self.reference(x).codes[0].numpy()

    # ---- batches --------------------------------------------------------------------------------

    @property
    def margin(self) -> float:
        """The margin in use: calibrated, or the policy's default before any calibration."""
        return self.policy.default if self._margin is None else self._margin

    def submit(self, motions: np.ndarray, calibrate: bool = False) -> Future:
        """encode_batch on a pinned worker; the Future holds its BatchResult. Hybrid: the fast
        encoder is launched here, the worker waits for its Decision and re-checks it."""
        if self.fast is None:
            return self.threads.submit(self._encode_batch, motions, calibrate)
        collect = self.fast(motions)
        return self.threads.submit(self._recheck_fast, motions, collect, calibrate)

    def _recheck_fast(self, motions, collect, calibrate: bool) -> BatchResult:
        return self.recheck(torch.as_tensor(motions), collect(), calibrate)

    def encode_batch(self, motions, calibrate: bool = False) -> BatchResult:
        """(B, m, D) normalized motions -> BatchResult, each row's codes the ones it gets alone.
        `calibrate`: re-encode every row alone and measure (the codes are exact either way)."""
        if in_one_thread():  # a pinned worker (or a one-thread process): no hand-off needed
            if self.fast is None:
                return self._encode_batch(motions, calibrate)
            return self._recheck_fast(motions, self.fast(motions), calibrate)
        return self.submit(motions, calibrate).result()

    def _encode_batch(self, motions, calibrate: bool) -> BatchResult:
        x = torch.as_tensor(motions)
        fast = self.model.decide(x)
        if len(x) == 1 and not calibrate:  # one motion on one thread: the reference itself
            return BatchResult(fast.codes.numpy(), Checks())
        return self.recheck(x, fast, calibrate)

    def recheck(self, x: torch.Tensor, fast: Decision, calibrate: bool = False) -> BatchResult:
        """Given a batch and the Decision some fast encoder made for it (on CPU: this model,
        batched), re-encode alone every row with a token whose slack is within the margin (all
        rows when calibrating), keep the reference's codes, and measure how far the fast decision
        variables were from the reference's. Must run on one intra-op thread."""
        codes = fast.codes.numpy().copy()
        checks = Checks()
        margin = self.margin
        # NaN slack compares False: `not (slack > margin)` re-checks it
        near = ~(fast.slack > margin).all(dim=1)
        rows = range(len(x)) if calibrate else near.nonzero().flatten().tolist()
        deviation = 0.0
        for row in rows:
            alone = self.model.decide(x[row:row + 1])
            moved = float(self.model.deviation(alone.variables[0], fast.variables[row]).max())
            deviation = max(deviation, moved)
            changed = alone.codes[0].numpy()
            checks.tokens_changed += int((changed != codes[row]).sum())
            codes[row] = changed
        n = len(rows)
        if calibrate:
            checks.calibration_rows, checks.measured_deviation = n, deviation
            checks.calibration_tokens = n * codes.shape[1]
        else:
            checks.rows_reencoded, checks.max_reencode_deviation = n, deviation
            checks.margin = margin
            if not deviation <= self.policy.stop_fraction * margin:
                with self._lock:
                    self.checks = self.checks.add(checks)
                raise ExactnessError(
                    f"exactness check failed: a motion re-encoded alone moved its decision variables "
                    f"by {deviation:.3g} from the batched encoding, more than "
                    f"{self.policy.stop_fraction:g} of the margin {margin:.3g} (calibrated on "
                    f"{self.checks.calibration_tokens} tokens): codes of rows not re-encoded may be "
                    "wrong, so encoding stops", deviation)
        with self._lock:
            self.checks = self.checks.add(checks)
        return BatchResult(codes, checks)

    def calibrate(self, batches: list) -> list[BatchResult]:
        """Encode sample batches both batched and row by row (in parallel), set the margin from
        the largest deviation measured (and any prior one), and return their exact results."""
        results = [f.result() for f in [self.submit(b, calibrate=True) for b in batches]]
        measured = max([r.checks.measured_deviation for r in results], default=0.0)
        if not sum(r.checks.calibration_rows for r in results):
            return results  # nothing measured is no evidence of a small deviation: margin unchanged
        with self._lock:
            self._margin = self.policy.margin_for(max(measured, self._prior))
            self.checks.margin = max(self.checks.margin, self._margin)
        for result in results:  # the margin they set travels with them (into a store's meta)
            result.checks.margin = self._margin
        return results

    def close(self) -> None:
        if self._own_threads:
            self.threads.close()

    def __enter__(self) -> ExactEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the fast side of a hybrid: a model on a GPU --------------------------------------------


def row_buckets(rows: int) -> list[int]:
    """Split `rows` into power-of-two chunk sizes, largest first (37 -> 32, 4, 1): a batch of
    any size then runs in at most log2(rows) + 1 shapes per length, so kernels picked once per
    (rows, length) are reused instead of chosen again for every new row count."""
    sizes = []
    while rows:
        size = 1 << (rows.bit_length() - 1)
        sizes.append(size)
        rows -= size
    return sizes


class DeviceFast:
    """A batched fast encoder on `model`'s device for ExactEncoder(fast=...): called with a host
    batch it launches the work and returns a function that gives the Decision on the host.

    On CUDA: the batch is copied into pinned host memory and to the GPU on a side stream, the
    encoder runs on the current stream once the copy is done, rows are split into power-of-two
    buckets, and the Decision comes back with non-blocking copies and one event: the caller is
    never synchronized, the re-check worker waits on the event. On any other device the same calls
    run plainly (no pinning, no streams), which is what the CPU tests exercise."""

    def __init__(self, model: VQVAE, precision: str = "fp32", buckets: bool = True):
        self.model, self.precision, self.buckets = model, precision, buckets
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def __call__(self, motions: np.ndarray) -> Callable[[], Decision]:
        host = torch.as_tensor(motions)
        if self.cuda:
            host = host.pin_memory()
            with torch.cuda.stream(self._copy_stream):
                x = host.to(self.device, non_blocking=True)
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
            x.record_stream(torch.cuda.current_stream(self.device))
        else:
            x = host.to(self.device)
        sizes = row_buckets(len(x)) if self.buckets else [len(x)]
        parts, start = [], 0
        # cudnn.benchmark would tune again for every new (rows, length): ~120 lengths x the row
        # buckets cost more than they save; off for the call (process-global, restored after)
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            for size in sizes:
                parts.append(self.model.decide(x[start:start + size], self.precision))
                start += size
        finally:
            torch.backends.cudnn.benchmark = benchmark
        decision = Decision(*(torch.cat(field) for field in zip(*parts))) if len(parts) > 1 else parts[0]
        if not self.cuda:
            on_host = Decision(*(t.to("cpu") for t in decision))
            return lambda: on_host
        on_host = Decision(*(t.to("cpu", non_blocking=True) for t in decision))
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))

        def collect() -> Decision:
            done.synchronize()  # in the re-check worker: the submitting thread never waits
            keep = host  # noqa: F841 - the pinned source lives until the copies are done
            return on_host

        return collect
