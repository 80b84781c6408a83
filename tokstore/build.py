"""The build pipeline: a dataset's motion files -> VQ-VAE codes -> one committed token store.

The order of work is chosen so that bad input never costs encoded work and a crash never costs
committed work:
1. cheap checks first (split, statistics, checkpoint against config), then the store's provenance:
   a store made with another checkpoint, model config or statistics is refused (stale codes are the
   classic failure of per-file code directories), a finished one makes the build a no-op;
2. preflight of every split entry (.npy header, caption file), every problem reported at once;
3. windows of consecutive split entries are loaded in parallel, encoded in equal-length batches,
   appended in split order and committed every `commit_every` motions together with how far
   through the split the build is, so that re-running the same command resumes at the last commit.
Under torchrun the windows go round-robin to the ranks and their codes come back to rank 0, the
only writer: the store is the one a single process writes.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import Future
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vqvae import VQVAE, VQVAEConfig, file_sha256, load_checkpoint
from vqvae.config import flag_name
from vqvae.exact import (BatchResult, Checks, DeviceFast, ExactEncoder, ExactnessError, MarginPolicy,
                         PinnedThreads)

from .distributed import Ranks
from .errors import StoppedBySignal, TokstoreError
from .lifetime import Interrupted, StopSignals
from .provenance import CODE_DECIDING, COMMITTED, RESUMED, BuildProgress, Provenance
from .sources import (CROP_POLICY, Entry, LoadFailure, MotionBatch, SourceLayout, iter_batches,
                      load_motion, load_stats, preflight, read_split, stats_sha256)
from .store import NotAStoreError, StoreError, TokenStore

PRECISIONS = ("fp32", "tf32", "bf16")
ON_ERROR = ("fail", "skip")
# (precision and device decide whether codes are exact: see encode_mode and _refuse_mixed)
EXACT = "exact"
MARGIN_POLICY = MarginPolicy()
AGREEMENT_SAMPLE = 16  # motions encoded twice to show a reduced precision's agreement with fp32
# frames per encoder batch by device: CPU convolutions slow down once a batch's activations
# outgrow the caches (~11k frames/s at 32k frames vs 15-27k at 3-16k, width 512), a GPU fills up
BATCH_FRAMES = {"cpu": 8192, "cuda": 131072}


class BuildError(TokstoreError):
    """The build cannot start or go on: bad input, or a store it must not extend."""


class StaleStoreError(BuildError):
    """The store holds codes made with another checkpoint, model config or statistics."""


class LoadFailedError(BuildError):
    """Under --on-error fail, an entry that passed preflight failed to load (NaN/Inf values)."""


class MixedCodesError(BuildError):
    """Resuming would mix exact and non-exact codes (or two non-exact kinds) in one store."""


def encode_mode(device: torch.device, precision: str) -> str:
    """"exact" where the codes equal the original's by construction (fp32 through vqvae.exact:
    on CPU, or on CUDA with the CPU re-check), else "inexact <device> <precision>": two inexact
    modes give different codes too."""
    exact = precision == "fp32" and device.type in ("cpu", "cuda")
    return EXACT if exact else f"inexact {device.type} {precision}"


def _mode_line(mode: str, device: torch.device) -> str:
    if mode == EXACT and device.type == "cuda":
        return ("codes: exact (CUDA fp32 checked on the CPU): every token within a margin of a "
                "decision boundary, calibrated GPU against CPU at start, is re-encoded by the CPU "
                "exact path (whole motion, alone, one thread)")
    if mode == EXACT:
        return ("codes: exact (CPU fp32): each motion gets the codes the original gets for it "
                "alone; batched rows near a decision boundary are re-encoded alone, with a margin "
                "calibrated on this machine at start")
    return (f"codes: NOT exact ({mode.removeprefix('inexact ')}): a few tokens may differ from the "
            "original's; --device cpu --precision fp32 gives exact codes")


class BuildInterrupted(BuildError, StoppedBySignal):
    """SIGTERM or SIGINT stopped the build after committing every finished window."""


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


@dataclass
class BuildOptions:
    layout: SourceLayout
    checkpoint: Path
    model: VQVAEConfig
    store: str
    backend: str | None = None  # None: hdf5 for a path ending in .h5/.hdf5, else zarr
    device: str = "auto"  # auto: cuda if present
    precision: str = "fp32"
    workers: int = 2  # DataLoader processes loading motions; 0 loads in this process
    batch_frames: int | None = None  # frames per encoder batch (None: BATCH_FRAMES by device)
    window: int = 4096  # consecutive split entries loaded, sorted by length and batched together
    commit_every: int = 50_000  # motions; commits happen at the first window end past it
    on_error: str = "fail"
    progress: bool = True
    allow_mixed_codes: bool = False  # resume a store whose codes were made in another mode
    log: Callable[[str], None] = field(default=_stderr, repr=False)


@dataclass
class BuildSummary:
    store: str
    samples: int  # in the store now
    codes: int  # codes in the store now (the end tokens, one per sample, not counted)
    motions: int  # encoded by this run
    frames: int  # encoded by this run (after cropping)
    skipped: list[dict]  # {name, path, reason} of every split entry left out
    seconds: float
    resumed_from: int = 0  # samples the store held before this run
    already_complete: bool = False
    rank: int = 0  # under torchrun only rank 0's summary describes the store


def model_config(preset: str | None, flags: list[str], input_dim: int | None = None) -> VQVAEConfig:
    """The config a command line names: a preset, the original model flags, or a preset with some
    flags replaced. A layout that implies the feature count (HumanML3D 263, KIT 251) sets
    input_dim unless --input-dim is given."""
    if not preset and not flags:
        raise BuildError("name the model: --preset motionmillion|t2m-gpt, or the original flags "
                         "(e.g. --nb-code 65536 --quantizer FSQ --down-t 1 ...)")
    base = VQVAEConfig.preset(preset).to_flags() if preset else []
    config = VQVAEConfig.from_flags(base + list(flags))
    given = {f.partition("=")[0].replace("_", "-") for f in flags}
    if input_dim is not None and "--input-dim" not in given and config.input_dim != input_dim:
        config = VQVAEConfig.from_flags(config.to_flags() + ["--input-dim", str(input_dim)])
    return config


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" is cuda when present; a bare "cuda" under torchrun is this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BuildError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BuildError(f"device {name}: no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def build(options: BuildOptions) -> BuildSummary:
    """Encode the split into the store (created, resumed, or left alone when finished)."""
    started = time.perf_counter()
    _check_options(options)
    with Ranks.from_env() as ranks, StopSignals() as stop:
        try:
            device = resolve_device(options.device, ranks.local_rank)
            if options.batch_frames is None:
                options = replace(options, batch_frames=BATCH_FRAMES.get(device.type, 131072))
            job, share = ranks.from_leader(lambda: _prepare(options, device, ranks.world))
        except Interrupted as exc:
            raise BuildInterrupted(f"interrupted by {exc}: before encoding began, nothing new was "
                                   "committed; re-run the same command to start",
                                   exc.signum, ranks.rank) from None
        if share.done is not None:
            share.done.seconds = time.perf_counter() - started
            share.done.rank = ranks.rank
            return share.done
        model = job.model if job else load_checkpoint(options.checkpoint, options.model, device)
        return _run(options, ranks, job, share, model, device, started, stop)


def _check_options(options: BuildOptions) -> None:
    for name, value, choices in (("precision", options.precision, PRECISIONS),
                                 ("on_error", options.on_error, ON_ERROR)):
        if value not in choices:
            raise BuildError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    for name in ("batch_frames", "window", "commit_every"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise BuildError(f"{name} must be a positive number, not {getattr(options, name)}")
    if options.workers < 0:
        raise BuildError(f"workers must be 0 or more, not {options.workers}")


# ---- rank 0: checks, provenance, preflight, resume point ---------------------------------------


@dataclass
class _Share:
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


@dataclass
class _Job:
    """What rank 0 keeps: the open store and the bookkeeping its commits carry."""

    store: TokenStore
    model: VQVAE
    preflight_skipped: list[dict]  # every problem preflight found, in split order
    load_skipped: list[dict]  # entries that failed to load, found so far
    split_index: dict[str, int]
    split_sha256: str
    n_names: int
    frames_to_do: int
    resumed_from: int
    next_entry: int  # split index the next window starts at (as far as is appended)
    since_commit: int = 0  # motions appended since the last commit
    consistent: bool = True  # False while an append is under way: never commit then
    mode: str = EXACT
    prior_checks: Checks = field(default_factory=Checks)  # what earlier runs recorded
    checks: Checks = field(default_factory=Checks)  # this run's appended windows
    share: _Share | None = None  # rank 0's own share (what its exactness check saw)
    agreement: dict | None = None  # an inexact run's agreement with exact codes


def _prepare(options: BuildOptions, device: torch.device, world: int):
    layout, config, log = options.layout, options.model, options.log
    names = read_split(layout.split_file)
    if not names:
        raise BuildError(f"{layout.split_file}: split is empty")
    if layout.input_dim is not None and layout.input_dim != config.input_dim:
        raise BuildError(f"the dataset layout has {layout.input_dim} features, the model "
                         f"--input-dim {config.input_dim}")
    mean, std = load_stats(layout.mean_file, layout.std_file, config.input_dim)
    model = load_checkpoint(options.checkpoint, config, device)
    split_sha = hashlib.sha256(Path(layout.split_file).read_bytes()).hexdigest()
    mode = encode_mode(device, options.precision)
    encoder = {"device": device.type, "precision": options.precision, "mode": mode,
               "torch_version": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    provenance = Provenance(
        legacy_code_dtype=str(config.code_dtype),
        model_config=config.to_dict(),
        checkpoint_sha256=file_sha256(options.checkpoint),
        stats_sha256=stats_sha256(layout.mean_file, layout.std_file),
        crop_policy=CROP_POLICY,
        precision=options.precision,
        device=device.type,
        torch_version=torch.__version__,
        exactness_mode=mode,
        encoders=[encoder],  # every distinct device/precision/torch that wrote codes
        source_paths=layout.to_dict(),
        # the statistics themselves, so that decode and verify work without the source files,
        # each with its dtype: normalization follows numpy's promotion of the two
        mean=mean.tolist(), std=std.tolist(), stats_dtype=str(mean.dtype),
        mean_dtype=str(mean.dtype), std_dtype=str(std.dtype))

    existing = _open_existing(options.store)
    prior = Checks()
    if existing is not None:
        with existing:
            recorded = Provenance.from_meta(existing.meta)
            _refuse_stale(existing, recorded, provenance)
            _refuse_mixed(existing, recorded, mode, options, device)
            prior = Checks.from_dict(recorded.exactness)
            if recorded.progress.finished(split_sha):
                done = BuildSummary(options.store, len(existing), int(existing.lengths.sum()),
                                    0, 0, recorded.skipped or [], 0.0,
                                    len(existing), already_complete=True)
                return None, [_Share(done=done)] * world

    checked = preflight(layout, names, config.input_dim, config.unit_length,
                        progress=options.progress)
    if checked.problems and options.on_error == "fail":
        raise checked.error(limit=1000)
    preflight_skipped = [_skip_record(p.name, p.path, p.reason) for p in checked.problems]
    if checked.problems:
        log(f"preflight found {len(checked.problems)} problem(s): skipping those entries "
            "(recorded in the store, listed at the end)")
    if not checked.entries:
        raise BuildError(f"no motion left to encode: all {len(names)} split entries have problems")
    log(_mode_line(mode, device))
    agreement = None
    if mode != EXACT:
        agreement = _agreement(options, model, checked.entries, mean, std)
        log(f"precision {options.precision} on {device.type}: {agreement['share']:.2%} of "
            f"{agreement['codes']} codes equal to the exact codes on {agreement['motions']} motions "
            "(only CPU fp32 reproduces the original exactly)")

    if existing is None:
        store = TokenStore.create(options.store, config.codebook_size, options.backend,
                                  meta=provenance.to_meta())
        next_entry, load_skipped = 0, []
    else:
        store = TokenStore.open(options.store, "a")
        try:
            next_entry, load_skipped = _resume_point(store, checked.entries, preflight_skipped)
        except BaseException:
            store.close()
            raise
        recorded = Provenance.from_meta(store.meta)
        encoders = recorded.encoders or []
        provenance.encoders = encoders + [encoder] * (encoder not in encoders)
        provenance.exactness_mode = mode if _stored_mode(recorded) == mode else "mixed"
        store.update_meta(provenance.to_meta(only=RESUMED))
        log(f"resuming {options.store}: {len(store)} samples committed, continuing at split "
            f"entry {next_entry + 1} of {len(names)}")

    todo = [e for e in checked.entries if e.index_in_split >= next_entry]
    frames_to_do = sum(e.cropped_frames for e in todo)
    job = _Job(store, model, preflight_skipped, load_skipped,
               {name: i for i, name in reversed(list(enumerate(names)))}, split_sha, len(names),
               frames_to_do, len(store), next_entry, mode=mode, prior_checks=prior,
               agreement=agreement)
    windows = [todo[i:i + options.window] for i in range(0, len(todo), options.window)]
    rounds = -(-len(windows) // world)
    # calibrate on ~1/64 of the work (the sample is encoded twice), within the policy's budget
    calibration = min(MARGIN_POLICY.calibration_frames, max(2048, frames_to_do // (64 * world)))
    prior_deviation = max(prior.measured_deviation, prior.max_reencode_deviation)
    shares = [_Share([e for w in windows[rank::world] for e in w], rounds, mean, std, mode=mode,
                     prior_deviation=prior_deviation, calibration_frames=calibration)
              for rank in range(world)]
    job.share = shares[0]
    return job, shares


def _open_existing(path: str) -> TokenStore | None:
    try:
        return TokenStore.open(path, "r")
    except NotAStoreError:
        local = Path(path) if "://" not in path else None
        if local is not None and local.exists() and (local.is_file() or any(local.iterdir())):
            raise  # something else is there: never overwrite it
        return None


def _refuse_stale(store: TokenStore, recorded: Provenance, provenance: Provenance) -> None:
    differences = []
    for key, label in CODE_DECIDING.items():
        have, want = getattr(recorded, key), getattr(provenance, key)
        if have == want:
            continue
        if key == "model_config" and isinstance(have, dict):
            fields = [f"{flag_name(k)} {have.get(k)!r} -> {want[k]!r}"
                      for k in want if have.get(k) != want[k]]
            differences.append(f"model config ({', '.join(fields)})")
        elif key.endswith("sha256"):
            stored = f"sha256 {have[:12]}..." if have else "none recorded"
            differences.append(f"{label} ({stored} in the store, sha256 {want[:12]}... now)")
        else:
            differences.append(f"{label} ({have!r} in the store, {want!r} now)")
    if differences:
        raise StaleStoreError(f"{store.path} was built with a different "
                              + "; a different ".join(differences)
                              + ". Its codes would be stale: build into a new store instead")


def _stored_mode(recorded: Provenance) -> str:
    """The store's exactness mode; stores from before it was recorded: by precision and device."""
    if recorded.exactness_mode:
        return recorded.exactness_mode
    if np.result_type(np.float32, *recorded.stat_dtypes) != np.float64:
        return "inexact float64-normalized"  # the build then normalized in float64
    return encode_mode(torch.device(recorded.device or "cpu"), recorded.precision or "fp32")


def _refuse_mixed(store: TokenStore, recorded: Provenance, mode: str, options: BuildOptions,
                  device: torch.device) -> None:
    have = _stored_mode(recorded)
    if have == mode or options.allow_mixed_codes:
        return
    raise MixedCodesError(
        f"{store.path} holds {have} codes and this run would add {mode} codes (the store's: "
        f"precision {recorded.precision!r} on {recorded.device!r}; this run's: "
        f"{options.precision!r} on {device.type!r}): one store would mix them. Build into a new "
        "store, or pass --allow-mixed-codes to resume anyway (the store then records mode 'mixed')")


def _skip_record(name: str, path: str, reason: str) -> dict:
    return {"name": name, "path": path, "reason": reason}


def _resume_point(store: TokenStore, entries: list[Entry], preflight_skipped: list[dict]):
    """(first split index still to do, load failures recorded so far), after checking that the
    store holds exactly the samples this split's entries before that index give."""
    recorded = Provenance.from_meta(store.meta)
    next_entry = recorded.progress.next_entry
    preflight_names = {s["name"] for s in preflight_skipped}
    split_names = {e.name for e in entries}
    load_skipped = [s for s in recorded.skipped or []
                    if s["name"] in split_names and s["name"] not in preflight_names]
    failed = {s["name"] for s in load_skipped}
    expected = [e.name for e in entries if e.index_in_split < next_entry and e.name not in failed]
    have = store.names
    if have != expected:
        first = next((i for i, (a, b) in enumerate(zip(have, expected)) if a != b),
                     min(len(have), len(expected)))
        raise BuildError(f"{store.path} holds {len(have)} samples that are not this split's first "
                         f"{len(expected)} entries (they differ at sample {first}): was it built "
                         "from another split or dataset? Build into a new store instead")
    return next_entry, load_skipped


def _agreement(options: BuildOptions, model: VQVAE, entries: list[Entry], mean, std) -> dict:
    """How many codes of the first few motions an inexact mode gives as the exact path does."""
    equal = total = 0
    sample = entries[:AGREEMENT_SAMPLE]
    cpu = model if model.device.type == "cpu" else load_checkpoint(options.checkpoint,
                                                                   options.model, "cpu")
    with ExactEncoder(cpu, mean, std) as engine:
        for entry in sample:
            motion = load_motion(entry.motion_path, model.unit_length, engine.mean, engine.std)
            exact = engine.encode_one(motion)
            x = torch.from_numpy(motion)[None]
            if model.device.type == "cpu":  # on a pinned thread, as the build encodes
                fast = engine.threads.submit(_fast_codes, model, x, options.precision).result()[0]
            else:
                fast = _fast_codes(model, x.to(model.device), options.precision)[0]
            equal += int((exact == fast).sum())
            total += exact.size
    return {"codes": total, "equal": equal, "share": equal / max(total, 1), "motions": len(sample)}


def _fast_codes(model: VQVAE, x: torch.Tensor, precision: str) -> np.ndarray:
    """A batch's codes as this device's kernels compute them at `precision` (no re-check)."""
    return model.encode(x, precision, batch_exact=False).cpu().numpy()


# ---- every rank: encode its windows; rank 0: write them in split order -------------------------


@dataclass
class _Window:
    """One window's outcome, in split order: what to append, and what failed to load."""

    names: list[str]
    codes: list[np.ndarray]
    texts: list[list[str]]
    failures: list[dict]
    next_entry: int  # split index just past the window's last entry
    frames: int
    checks: Checks = field(default_factory=Checks)  # the exactness checks of its batches


def _encode_windows(model: VQVAE, share: _Share, options: BuildOptions, device: torch.device,
                    on_batch: Callable[[int, int], None]):
    """This rank's windows, encoded, one _Window each, in order."""
    entries = share.entries
    done: dict[int, tuple[np.ndarray, list[str]]] = {}
    failures: list[dict] = []
    frames = 0
    checks = Checks()
    items = iter_batches(entries, share.mean, share.std, model.unit_length, options.batch_frames,
                         options.window, options.workers)
    engine = None
    if share.mode == EXACT and device.type == "cpu":
        engine = ExactEncoder(model, share.mean, share.std, torch.get_num_threads(),
                              MARGIN_POLICY, share.prior_deviation)
    elif share.mode == EXACT:  # hybrid: the device decides, the CPU reference re-checks
        reference = load_checkpoint(options.checkpoint, options.model, "cpu")
        engine = ExactEncoder(reference, share.mean, share.std, _recheck_threads(),
                              MARGIN_POLICY, share.prior_deviation, fast=DeviceFast(model))
    encoded = encode_batches(items, model, options.precision, device, engine=engine,
                             calibration_frames=share.calibration_frames)
    with engine or nullcontext(), closing(items), closing(encoded):
        try:
            for item, result in encoded:
                if isinstance(item, MotionBatch):
                    done.update(zip(item.entry_ids.tolist(), zip(result.codes, item.texts)))
                    checks = checks.add(result.checks)
                    frames += item.motions.shape[0] * item.motions.shape[1]
                    on_batch(len(result.codes), item.motions.shape[0] * item.motions.shape[1])
                elif isinstance(item, LoadFailure):
                    failures.append(_skip_record(item.name, item.path, item.reason))
                else:  # WindowEnd: every entry of the window is in `done` or `failures`
                    ids = [i for i in range(item.start, item.stop) if i in done]
                    yield _Window([entries[i].name for i in ids], [done[i][0] for i in ids],
                                  [done[i][1] for i in ids], failures,
                                  entries[item.stop - 1].index_in_split + 1, frames, checks)
                    done, failures, frames, checks = {}, [], 0, Checks()
        except ExactnessError as exc:  # recorded, so that a re-run calibrates past it
            share.exceeded = max(share.exceeded, exc.deviation)
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
        fast = threads.submit(_fast_codes, model, torch.from_numpy(item.motions), precision)
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


def _recheck_threads() -> int:
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


def _run(options: BuildOptions, ranks: Ranks, job: _Job | None, share: _Share, model: VQVAE,
         device: torch.device, started: float, stop: StopSignals) -> BuildSummary:
    bar = tqdm(total=job.frames_to_do if job else 0, unit="frame", unit_scale=True,
               desc="encode", disable=not (job and options.progress), smoothing=0.1)
    motions = 0
    clock = time.perf_counter()

    def on_batch(n_motions: int, n_frames: int):
        nonlocal motions
        motions += n_motions
        bar.update(n_frames)
        rate = motions / max(time.perf_counter() - clock, 1e-9)
        bar.set_postfix_str(f"{rate:.0f} motions/s", refresh=False)

    windows = _encode_windows(model, share, options, device, on_batch)
    encoded = frames = 0
    with job.store if job else nullcontext(), closing(windows), bar:
        try:
            for _ in range(share.rounds):
                gathered = ranks.all_gather(next(windows, None))
                for rank, window in enumerate(gathered):
                    if window is None:
                        continue
                    if window.failures and options.on_error == "fail":
                        failure = window.failures[0]
                        raise LoadFailedError(
                            f"{failure['path']}: {failure['reason']} (found while loading; "
                            "committed samples are kept: fix it and re-run to resume)")
                    encoded += len(window.names)
                    frames += window.frames
                    if job:
                        if rank:
                            motions += len(window.names)
                            bar.update(window.frames)
                        with stop.held(raise_after=True):  # an append is never cut in half
                            _append(job, window)
                if job and job.since_commit >= options.commit_every:
                    with stop.held(raise_after=True):
                        _commit(job)
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.filename is None:
                exc.filename = options.store  # a full disk says which store it stopped
            with stop.held():  # a second signal cannot cut this commit short
                if job and job.consistent and not isinstance(exc, StoreError):
                    _commit(job)  # complete windows only: resuming picks up right after them
            if isinstance(exc, LoadFailedError):  # every rank raises it: let rank 0 commit
                ranks.barrier()  # before torchrun stops the processes still running
            if stop.received is not None:  # also when a peer's death came first (torchrun)
                kept = f"{len(job.store)} samples committed to {job.store.path}" if job else \
                    "rank 0 commits"
                raise BuildInterrupted(f"interrupted by {signal.Signals(stop.received).name}: {kept}; "
                                       "re-run the same command to resume", stop.received,
                                       ranks.rank) from None
            raise
        seconds = time.perf_counter() - started
        if not job:
            return BuildSummary(options.store, 0, 0, encoded, frames, [], seconds, rank=ranks.rank)
        with stop.held():  # complete: a signal now changes nothing
            _commit(job, complete=True)
        store = job.store
        return BuildSummary(str(store.path), len(store), int(store.lengths.sum()), encoded, frames,
                            store.meta["skipped"], seconds, job.resumed_from)


def _append(job: _Job, window: _Window) -> None:
    job.consistent = False
    job.store.append(window.names, window.codes, window.texts)
    job.load_skipped += window.failures
    job.checks = job.checks.add(window.checks)
    job.next_entry = window.next_entry
    job.since_commit += len(window.names)
    job.consistent = True


def _commit(job: _Job, complete: bool = False) -> None:
    skipped = sorted(job.preflight_skipped + job.load_skipped,
                     key=lambda s: job.split_index[s["name"]])
    next_entry = job.n_names if complete else job.next_entry
    progress = BuildProgress(next_entry, job.n_names, job.split_sha256, complete)
    job.store.update_meta(Provenance(skipped=skipped, exactness=_exactness_record(job),
                                     build=progress).to_meta(only=COMMITTED))
    job.store.commit()
    job.since_commit = 0


def _exactness_record(job: _Job) -> dict:
    """Meta `exactness`: how this store's codes were checked, over every run that wrote them."""
    checks = job.prior_checks.add(job.checks)
    if job.share is not None and job.share.exceeded:
        checks.max_reencode_deviation = max(checks.max_reencode_deviation, job.share.exceeded)
    record = {"mode": Provenance.from_meta(job.store.meta).exactness_mode or job.mode,
              **checks.to_dict(),
              "safety_factor": MARGIN_POLICY.safety, "margin_floor": MARGIN_POLICY.floor,
              "stop_fraction": MARGIN_POLICY.stop_fraction,
              "decision_variable": ("FSQ bounded value" if job.model.config.quantizer == "FSQ"
                                    else "codebook search |dx| / |x|")}
    if job.agreement is not None:
        record["agreement"] = job.agreement
    return record
