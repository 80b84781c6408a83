"""Rank 0's plan before any encoding: the cheap checks, the store's provenance against this
run's (stale or mixed codes refused, a finished build a no-op), preflight, the resume point, and
the windows each rank encodes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from vqvae import file_sha256, load_checkpoint
from vqvae.config import flag_name
from vqvae.exact import Checks

from .build_encode import MARGIN_POLICY, RankWork, measure_agreement
from .build_options import EXACT, BuildError, BuildOptions, BuildSummary, encode_mode, mode_line
from .build_writer import WriterState
from .provenance import CODE_DECIDING, RESUMED, Provenance, skipped_entry
from .sources import CROP_POLICY, Entry, load_stats, preflight, read_split, stats_sha256
from .store import NotAStoreError, TokenStore


class StaleStoreError(BuildError):
    """The store holds codes made with another checkpoint, model config or statistics."""


class MixedCodesError(BuildError):
    """Resuming would mix exact and non-exact codes (or two non-exact kinds) in one store."""


def prepare(options: BuildOptions, device: torch.device,
            world: int) -> tuple[WriterState | None, list[RankWork]]:
    """(rank 0's writer state, each rank's work); with the store already complete, (None, the
    summary for every rank). Raises before any encoding on every check that fails."""
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
                return None, [RankWork(done=done)] * world

    checked = preflight(layout, names, config.input_dim, config.unit_length,
                        progress=options.progress)
    if checked.problems and options.on_error == "fail":
        raise checked.error(limit=1000)
    preflight_skipped = [skipped_entry(p.name, p.path, p.reason) for p in checked.problems]
    if checked.problems:
        log(f"preflight found {len(checked.problems)} problem(s): skipping those entries "
            "(recorded in the store, listed at the end)")
    if not checked.entries:
        raise BuildError(f"no motion left to encode: all {len(names)} split entries have problems")
    log(mode_line(mode, device))
    agreement = None
    if mode != EXACT:
        agreement = measure_agreement(options, model, checked.entries, mean, std)
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
            recorded = Provenance.from_meta(store.meta)
            next_entry, load_skipped = _resume_point(store, recorded, checked.entries,
                                                     preflight_skipped)
        except BaseException:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 - said; the resume check's error is raised
                log(f"after that error, closing {store.path} failed too "
                    f"({type(exc).__name__}: {exc})")
            raise
        encoders = recorded.encoders or []
        provenance.encoders = encoders + [encoder] * (encoder not in encoders)
        provenance.exactness_mode = mode if _stored_mode(recorded) == mode else "mixed"
        store.update_meta(provenance.to_meta(only=RESUMED))
        log(f"resuming {options.store}: {len(store)} samples committed, continuing at split "
            f"entry {next_entry + 1} of {len(names)}")

    todo = [e for e in checked.entries if e.index_in_split >= next_entry]
    frames_to_do = sum(e.cropped_frames for e in todo)
    state = WriterState(store, model, preflight_skipped, load_skipped,
                        {name: i for i, name in reversed(list(enumerate(names)))}, split_sha,
                        len(names), frames_to_do, len(store), next_entry, mode=mode,
                        prior_checks=prior, agreement=agreement)
    windows = [todo[i:i + options.window] for i in range(0, len(todo), options.window)]
    rounds = -(-len(windows) // world)
    # calibrate on ~1/64 of the work (the sample is encoded twice), within the policy's budget
    calibration = min(MARGIN_POLICY.calibration_frames, max(2048, frames_to_do // (64 * world)))
    prior_deviation = max(prior.measured_deviation, prior.max_reencode_deviation)
    work_by_rank = [RankWork([e for w in windows[rank::world] for e in w], rounds, mean, std,
                             mode=mode, prior_deviation=prior_deviation,
                             calibration_frames=calibration)
                    for rank in range(world)]
    state.work = work_by_rank[0]
    return state, work_by_rank


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


def _resume_point(store: TokenStore, recorded: Provenance, entries: list[Entry],
                  preflight_skipped: list[dict]):
    """(first split index still to do, load failures recorded so far), after checking that the
    store (whose provenance is `recorded`) holds exactly the samples this split's entries before
    that index give."""
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
