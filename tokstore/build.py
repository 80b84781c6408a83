"""The build pipeline: a dataset's motion files -> VQ-VAE codes -> one committed token store.

The order of work is chosen so that bad input never costs encoded work and a crash never costs
committed work:
1. cheap checks first (split, statistics, checkpoint against config), then the store's provenance:
   a store made with another checkpoint, model config or statistics is refused (stale codes are the
   classic failure of per-file code directories), a finished one makes the build a no-op;
2. preflight of every split entry (.npy header, caption file), every problem reported at once;
3. windows of consecutive split entries are loaded in parallel, encoded in equal-length batches,
   appended in split order and committed every `commit_every` motions together with how far
   through the split the build is, so that re-running the same command resumes at the last commit
   (on a writer thread: encoding goes on while a commit fsyncs).
Under torchrun the windows go round-robin to the ranks and their codes come back to rank 0, the
only writer: the store is the one a single process writes.

This module runs the rounds and turns errors and stop signals into commits of what was encoded;
the parts: build_options (options, device, mode), build_plan (step 1-2, rank 0), build_encode
(a rank's encoding), build_writer (the store writing). It re-exports the names callers import.
"""
from __future__ import annotations

import signal
import time
from contextlib import closing, nullcontext
from dataclasses import replace

import torch
from tqdm import tqdm

from vqvae import VQVAE, VQVAEConfig, load_checkpoint
from vqvae.config import flag_values

from .build_encode import (AGREEMENT_SAMPLE, MARGIN_POLICY, RankWork, encode_batches,
                           encode_windows, one_intra_op_thread, recheck_threads)
from .build_options import (BATCH_FRAMES, EXACT, ON_ERROR, PRECISIONS, BuildError, BuildOptions,
                            BuildSummary, check_options, encode_mode, resolve_device)
from .build_plan import MixedCodesError, StaleStoreError, prepare
from .build_writer import StoreWriterThread, WriterState, commit
from .distributed import Ranks
from .errors import StoppedBySignal
from .lifetime import Interrupted, StopSignals
from .store import StoreError

__all__ = ["AGREEMENT_SAMPLE", "BATCH_FRAMES", "EXACT", "MARGIN_POLICY", "ON_ERROR", "PRECISIONS",
           "BuildError", "BuildInterrupted", "BuildOptions", "BuildSummary", "LoadFailedError",
           "MixedCodesError", "StaleStoreError", "build", "encode_batches",
           "encode_mode", "model_config", "one_intra_op_thread", "recheck_threads",
           "resolve_device"]


class LoadFailedError(BuildError):
    """Under --on-error fail, an entry that passed preflight failed to load (NaN/Inf values)."""


class BuildInterrupted(BuildError, StoppedBySignal):
    """SIGTERM or SIGINT stopped the build after committing every finished window."""


def model_config(preset: str | None, flags: list[str], input_dim: int | None = None) -> VQVAEConfig:
    """The config a command line names: a preset, the original model flags, or a preset with some
    flags replaced. A layout that implies the feature count (HumanML3D 263, KIT 251) sets
    input_dim unless --input-dim is given."""
    if not preset and not flags:
        raise BuildError("name the model: --preset motionmillion|t2m-gpt, or the original flags "
                         "(e.g. --nb-code 65536 --quantizer FSQ --down-t 1 ...)")
    given = flag_values(flags)
    if input_dim is not None:
        given.setdefault("input_dim", input_dim)
    return VQVAEConfig.preset(preset, **given) if preset else VQVAEConfig(**given)


def build(options: BuildOptions) -> BuildSummary:
    """Encode the split into the store (created, resumed, or left alone when finished)."""
    started = time.perf_counter()
    check_options(options)
    with Ranks.from_env() as ranks, StopSignals() as stop:
        try:
            device = resolve_device(options.device, ranks.local_rank)
            if options.batch_frames is None:
                options = replace(options, batch_frames=BATCH_FRAMES.get(device.type, 131072))
            state, work = ranks.scatter_from_rank0(lambda: prepare(options, device, ranks.world))
        except Interrupted as exc:
            raise BuildInterrupted(f"interrupted by {exc}: before encoding began, nothing new was "
                                   "committed; re-run the same command to start",
                                   exc.signum, ranks.rank) from None
        if work.done is not None:
            work.done.seconds = time.perf_counter() - started
            work.done.rank = ranks.rank
            return work.done
        model = state.model if state else load_checkpoint(options.checkpoint, options.model, device)
        return _run(options, ranks, state, work, model, device, started, stop)


def _run(options: BuildOptions, ranks: Ranks, state: WriterState | None, work: RankWork,
         model: VQVAE, device: torch.device, started: float, stop: StopSignals) -> BuildSummary:
    bar = tqdm(total=state.frames_to_do if state else 0, unit="frame", unit_scale=True,
               desc="encode", disable=not (state and options.progress), smoothing=0.1)
    motions = 0
    clock = time.perf_counter()

    def on_batch(n_motions: int, n_frames: int):
        nonlocal motions
        motions += n_motions
        bar.update(n_frames)
        rate = motions / max(time.perf_counter() - clock, 1e-9)
        bar.set_postfix_str(f"{rate:.0f} motions/s", refresh=False)

    windows = encode_windows(model, work, options, device, on_batch)
    writer = StoreWriterThread(state, options.commit_every) if state else None
    encoded = frames = 0
    with state.store if state else nullcontext(), closing(windows), bar:
        try:
            for _ in range(work.rounds):
                window = next(windows, None)
                gathered = ranks.gather_to_rank0(window)  # None on the other ranks
                failing = _first_load_failure(gathered, options) if writer else None
                verdict = ranks.broadcast_from_rank0(failing and failing[1])
                if writer:
                    # (in rank order: a round's windows, up to a failing one, are split order)
                    ready = [(rank, w) for rank, w in enumerate(gathered)
                             if w is not None and (not failing or rank < failing[0])]
                    for rank, window in ready:
                        encoded += len(window.names)
                        frames += window.frames
                        if rank:
                            motions += len(window.names)
                            bar.update(window.frames)
                    # a commit check after the round's last window, none in a failing round
                    writer.write_round([w for _, w in ready], check_commit=not failing)
                elif window is not None:
                    encoded += len(window.names)
                    frames += window.frames
                if verdict is not None:  # every rank raises it in the same round
                    raise LoadFailedError(verdict)
            if writer and (error := writer.close()) is not None:
                raise error
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.filename is None:
                exc.filename = options.store  # a full disk says which store it stopped
            with stop.held():  # a second signal cannot cut this commit short
                if state:
                    _keep_what_is_appended(state, writer, exc, options.log)
            if isinstance(exc, LoadFailedError):  # every rank raises it: let rank 0 commit
                ranks.barrier()  # before torchrun stops the processes still running
            if stop.received is not None:  # also when a peer's death came first (torchrun)
                kept = f"{len(state.store)} samples committed to {state.store.path}" if state else \
                    "rank 0 commits"
                name = signal.Signals(stop.received).name
                raise BuildInterrupted(f"interrupted by {name}: {kept}; re-run the same command "
                                       "to resume", stop.received, ranks.rank) from None
            raise
        seconds = time.perf_counter() - started
        if not state:
            return BuildSummary(options.store, 0, 0, encoded, frames, [], seconds, rank=ranks.rank)
        with stop.held():  # complete: a signal now changes nothing
            commit(state, complete=True)
        store = state.store
        return BuildSummary(str(store.path), len(store), int(store.lengths.sum()), encoded, frames,
                            store.meta["skipped"], seconds, state.resumed_from)


def _first_load_failure(gathered: list, options: BuildOptions) -> tuple[int, str] | None:
    """(its rank, the message) of the round's first window holding an entry that failed to load,
    under --on-error fail; None when the round goes on."""
    if options.on_error != "fail":
        return None
    for rank, window in enumerate(gathered):
        if window is not None and window.failures:
            failure = window.failures[0]
            return rank, (f"{failure['path']}: {failure['reason']} (found while loading; committed "
                          "samples are kept: fix it and re-run to resume)")
    return None


def _keep_what_is_appended(state: WriterState, writer: StoreWriterThread, error: BaseException,
                           log) -> None:
    """After `error` stopped the build: the writer writes the windows handed to it, and what is
    appended is committed (whole windows only: a resume picks up right after them). `error`
    stays the build's error: a failure here is said in one line, the store stays at its last
    commit."""
    secondary = writer.close()
    if secondary is error:  # the writer's own failure stopped the build
        secondary = None
    elif secondary is None and state.consistent and not isinstance(error, StoreError):
        try:
            commit(state)
        except Exception as exc:  # noqa: BLE001 - said below; `error` is what the user gets
            secondary = exc
    if secondary is not None:
        log(f"after that error, committing what was encoded failed too ({type(secondary).__name__}: "
            f"{secondary}): {state.store.path} stays at its last commit")
