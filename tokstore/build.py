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
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vqvae import VQVAE, VQVAEConfig, file_sha256, load_checkpoint
from vqvae.config import flag_name

from .distributed import Ranks
from .errors import StoppedBySignal, TokstoreError
from .lifetime import Interrupted, StopSignals
from .sources import (CROP_POLICY, Entry, LoadFailure, MotionBatch, SourceLayout, iter_batches,
                      load_motion, load_stats, preflight, read_split, stats_sha256)
from .store import NotAStoreError, StoreError, TokenStore

PRECISIONS = ("fp32", "tf32", "bf16")
ON_ERROR = ("fail", "skip")
# meta keys that decide the codes: a store made with other values must not be extended
PROVENANCE = {"checkpoint_sha256": "checkpoint", "model_config": "model config",
              "stats_sha256": "normalization statistics", "crop_policy": "crop policy",
              "precision": "precision"}
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
    provenance = {
        "legacy_code_dtype": str(config.code_dtype),
        "model_config": config.to_dict(),
        "checkpoint_sha256": file_sha256(options.checkpoint),
        "stats_sha256": stats_sha256(layout.mean_file, layout.std_file),
        "crop_policy": CROP_POLICY,
        "precision": options.precision,
        "device": device.type,
        "source_paths": layout.to_dict(),
        # the statistics themselves, so that decode and verify work without the source files
        "mean": mean.tolist(), "std": std.tolist(), "stats_dtype": str(mean.dtype),
    }

    existing = _open_existing(options.store)
    if existing is not None:
        with existing:
            _refuse_stale(existing, provenance)
            progress = existing.meta.get("build", {})
            if progress.get("complete") and progress.get("split_sha256") == split_sha:
                done = BuildSummary(options.store, len(existing), int(existing.lengths.sum()),
                                    0, 0, existing.meta.get("skipped", []), 0.0,
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
    if options.precision != "fp32":
        log(_agreement(model, checked.entries, mean, std, options.precision))

    if existing is None:
        store = TokenStore.create(options.store, config.codebook_size, options.backend,
                                  meta=provenance)
        next_entry, load_skipped = 0, []
    else:
        store = TokenStore.open(options.store, "a")
        try:
            next_entry, load_skipped = _resume_point(store, checked.entries, preflight_skipped)
        except BaseException:
            store.close()
            raise
        store.update_meta({"device": device.type, "source_paths": layout.to_dict()})
        log(f"resuming {options.store}: {len(store)} samples committed, continuing at split "
            f"entry {next_entry + 1} of {len(names)}")

    todo = [e for e in checked.entries if e.index_in_split >= next_entry]
    job = _Job(store, model, preflight_skipped, load_skipped,
               {name: i for i, name in reversed(list(enumerate(names)))}, split_sha, len(names),
               sum(e.cropped_frames for e in todo), len(store), next_entry)
    windows = [todo[i:i + options.window] for i in range(0, len(todo), options.window)]
    rounds = -(-len(windows) // world)
    shares = [_Share([e for w in windows[rank::world] for e in w], rounds, mean, std)
              for rank in range(world)]
    return job, shares


def _open_existing(path: str) -> TokenStore | None:
    try:
        return TokenStore.open(path, "r")
    except NotAStoreError:
        local = Path(path) if "://" not in path else None
        if local is not None and local.exists() and (local.is_file() or any(local.iterdir())):
            raise  # something else is there: never overwrite it
        return None


def _refuse_stale(store: TokenStore, provenance: dict) -> None:
    meta = store.meta
    differences = []
    for key, label in PROVENANCE.items():
        have, want = meta.get(key), provenance[key]
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


def _skip_record(name: str, path: str, reason: str) -> dict:
    return {"name": name, "path": path, "reason": reason}


def _resume_point(store: TokenStore, entries: list[Entry], preflight_skipped: list[dict]):
    """(first split index still to do, load failures recorded so far), after checking that the
    store holds exactly the samples this split's entries before that index give."""
    meta = store.meta
    next_entry = int(meta.get("build", {}).get("next_entry", 0))
    preflight_names = {s["name"] for s in preflight_skipped}
    split_names = {e.name for e in entries}
    load_skipped = [s for s in meta.get("skipped", [])
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


def _agreement(model: VQVAE, entries: list[Entry], mean, std, precision: str) -> str:
    """How many codes of the first few motions the reduced precision gives as fp32 does."""
    equal = total = 0
    sample = entries[:AGREEMENT_SAMPLE]
    with one_intra_op_thread() if model.device.type == "cpu" else nullcontext():  # as the build
        for entry in sample:
            motion = load_motion(entry.motion_path, model.unit_length, mean, std)
            x = torch.from_numpy(motion)[None].to(model.device)
            exact, fast = model.encode(x, "fp32"), model.encode(x, precision)
            equal += int((exact == fast).sum())
            total += exact.numel()
    return (f"precision {precision}: {equal / max(total, 1):.2%} of {total} codes equal to fp32 "
            f"on {len(sample)} motions (only fp32 reproduces the original exactly)")


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


def _encode_windows(model: VQVAE, share: _Share, options: BuildOptions, device: torch.device,
                    on_batch: Callable[[int, int], None]):
    """This rank's windows, encoded, one _Window each, in order."""
    entries = share.entries
    done: dict[int, tuple[np.ndarray, list[str]]] = {}
    failures: list[dict] = []
    frames = 0
    items = iter_batches(entries, share.mean, share.std, model.unit_length, options.batch_frames,
                         options.window, options.workers)
    encoded = encode_batches(items, model, options.precision, device)
    with closing(items), closing(encoded):
        for item, codes in encoded:
            if isinstance(item, MotionBatch):
                done.update(zip(item.entry_ids.tolist(), zip(codes, item.texts)))
                frames += item.motions.shape[0] * item.motions.shape[1]
                on_batch(len(codes), item.motions.shape[0] * item.motions.shape[1])
            elif isinstance(item, LoadFailure):
                failures.append(_skip_record(item.name, item.path, item.reason))
            else:  # WindowEnd: every entry of the window is in `done` or `failures`
                ids = [i for i in range(item.start, item.stop) if i in done]
                yield _Window([entries[i].name for i in ids], [done[i][0] for i in ids],
                              [done[i][1] for i in ids], failures,
                              entries[item.stop - 1].index_in_split + 1, frames)
                done, failures, frames = {}, [], 0


def encode_batches(items, model: VQVAE, precision: str, device: torch.device):
    """(item, codes of a MotionBatch or None), in the order of `items`.

    On CPU every batch is encoded with ONE intra-op thread, torch.get_num_threads() batches side
    by side: splitting one batch's small convolutions across cores scales poorly (and collapses on
    a busy machine) while whole batches in parallel scale almost linearly (the convolutions release
    the GIL). It also fixes the codes: fp32 sums can round their last bit differently with another
    thread count (the original's own codes flip ~1 token in 200,000 between 1 and 2 threads), so
    a CPU build gives the same codes on any machine size, with any --workers, under torchrun, and
    equals the original run with one thread."""

    def encode(motions: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(motions).to(device, non_blocking=True)
        return model.encode(x, precision).cpu().numpy()

    if device.type != "cpu":
        for item in items:
            yield item, encode(item.motions) if isinstance(item, MotionBatch) else None
        return
    pending: deque = deque()  # (item, future or None), oldest first
    with one_intra_op_thread() as cores, ThreadPoolExecutor(cores) as pool:
        for item in items:
            future = pool.submit(encode, item.motions) if isinstance(item, MotionBatch) else None
            pending.append((item, future))
            # hand back what is finished, and wait once 2 batches per core queue behind it
            while pending and (pending[0][1] is None or pending[0][1].done()
                               or len(pending) > 2 * cores):
                item, future = pending.popleft()
                yield item, future.result() if future else None
        while pending:
            item, future = pending.popleft()
            yield item, future.result() if future else None


@contextmanager
def one_intra_op_thread():
    """torch ops on one thread inside; yields the thread count they had (the cores to use)."""
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
    job.next_entry = window.next_entry
    job.since_commit += len(window.names)
    job.consistent = True


def _commit(job: _Job, complete: bool = False) -> None:
    skipped = sorted(job.preflight_skipped + job.load_skipped,
                     key=lambda s: job.split_index[s["name"]])
    next_entry = job.n_names if complete else job.next_entry
    job.store.update_meta({"skipped": skipped, "build": {
        "next_entry": next_entry, "split_entries": job.n_names,
        "split_sha256": job.split_sha256, "complete": complete}})
    job.store.commit()
    job.since_commit = 0
