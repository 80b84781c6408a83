"""Looking inside a store and deciding whether to trust it: the logic behind info/show/ls/stats/verify/decode.

Every function takes an open TokenStore and returns plain data (dicts, lists, arrays), so that the
CLI only formats (tokstore/render.py) and tests assert on numbers rather than on text.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tokstore
from tokstore.errors import TokstoreError
from tokstore.provenance import Provenance
from tokstore.store import oscalls


class InspectError(TokstoreError):
    """The store cannot answer this request: unknown name, or provenance it does not record."""


# ---------------------------------------------------------------------------------------------
# what the build recorded


def recorded_config(meta: dict):
    """The VQVAEConfig the store was built with (meta `model_config`)."""
    config = Provenance.from_meta(meta).config()
    if config is None:
        raise InspectError("the store records no model_config, so its VQ-VAE cannot be rebuilt")
    return config


def recorded_stats(meta: dict, mean_file=None, std_file=None) -> tuple[np.ndarray, np.ndarray]:
    """The mean/std the build normalized with: explicit files (both or neither), else the
    values recorded in meta `mean`/`std`, else the files named in meta `source_paths`."""
    from tokstore.sources import load_stats

    input_dim = recorded_config(meta).input_dim
    if (mean_file is None) != (std_file is None):
        raise InspectError("give --mean and --std together")
    if mean_file is not None:
        return load_stats(mean_file, std_file, input_dim)
    provenance = Provenance.from_meta(meta)
    recorded = provenance.recorded_stats()  # each in its own dtype
    if recorded is not None:
        mean, std = recorded
        if mean.shape != (input_dim,) or std.shape != (input_dim,) or (std <= 0).any():
            raise InspectError(f"the recorded mean/std are not {input_dim} values with std > 0")
        return mean, std
    sources = provenance.source_paths or {}
    if sources.get("mean_file") and sources.get("std_file"):
        return load_stats(sources["mean_file"], sources["std_file"], input_dim)
    raise InspectError("the store records no normalization statistics: pass --mean and --std")


def load_recorded_model(meta: dict, checkpoint, device: str = "cpu"):
    from vqvae import load_checkpoint

    return load_checkpoint(checkpoint, recorded_config(meta), device=device)


# ---------------------------------------------------------------------------------------------
# info / show / ls


def size_on_disk(path) -> int | None:
    """Bytes of disk a local store (a Zarr directory or one HDF5 file) takes: its files' blocks,
    where the platform counts them (a Zarr chunk file past its values is a hole), else their
    lengths; None for a remote URL."""
    path = Path(str(path))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
    else:
        return None
    return sum(oscalls.disk_bytes(f.stat()) for f in files)


def store_info(store) -> dict:
    """Counts, model config and provenance of a store, as one JSON-safe dict."""
    provenance = Provenance.from_meta(store.meta)
    n_codes = int(store.lengths.sum())
    unit = provenance.unit_length
    return {
        "path": str(store.path),
        "backend": store.backend,
        "format_version": store.format_version,
        "written_by": store.written_by,
        "read_by": tokstore.__version__,
        "samples": len(store),
        "codes": n_codes,
        "tokens": n_codes + len(store),  # + one end token per sample: what counts and prob hold
        "frames": n_codes * unit if unit else None,
        "unit_length": unit,
        "codebook_size": store.codebook_size,
        "end_token": store.end_token,
        "pad_token": store.pad_token,
        "code_dtype": store.code_dtype.name,
        **{key: getattr(provenance, key) for key in (
            "legacy_code_dtype", "model_config", "checkpoint_sha256", "stats_sha256",
            "crop_policy", "precision", "device", "torch_version", "exactness_mode", "encoders",
            "exactness", "source_paths")},
        "skipped": provenance.skipped or [],
        "size_bytes": size_on_disk(store.path),
    }


def show_sample(store, name: str) -> dict:
    """Codes and caption lines of one sample (caption lines without their line ends)."""
    sample = store[name]
    return {"name": sample.name, "length": len(sample.codes), "codes": sample.codes.tolist(),
            "texts": [line.rstrip("\r\n") for line in sample.texts]}


def list_samples(store, min_len=None, max_len=None, grep=None, name_glob=None) -> list[dict]:
    """Name, code count and first caption line (stripped) of each sample passing the filters."""
    indices = store.select(min_len=min_len, max_len=max_len, name_glob=name_glob, text_contains=grep)
    names, lengths = store.names, store.lengths
    rows = []
    for i in indices.tolist():
        texts = store.texts(i)
        rows.append({"name": names[i], "length": int(lengths[i]),
                     "caption": texts[0].strip() if texts else ""})
    return rows


# ---------------------------------------------------------------------------------------------
# stats


def perplexity(code_counts: np.ndarray) -> float:
    """exp(entropy) of the code distribution: how many equally used codes it is worth."""
    total = code_counts.sum()
    if total == 0:
        return 0.0
    p = code_counts[code_counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def code_counts(store) -> np.ndarray:
    """How often each real code occurs (end and pad tokens excluded)."""
    return np.asarray(store.counts[:store.codebook_size], dtype=np.int64)


def code_stats(store, top_k: int = 10) -> dict:
    """Codebook usage and the length distribution of a store."""
    counts = code_counts(store)
    total, size = int(counts.sum()), store.codebook_size
    active = int(np.count_nonzero(counts))
    top = [{"code": int(c), "count": int(counts[c]), "share": float(counts[c] / total)}
           for c in np.argsort(-counts, kind="stable")[:top_k] if counts[c] > 0]
    lengths = store.lengths
    quantiles = {}
    if len(lengths):
        p5, p25, p50, p75, p95 = np.percentile(lengths, [5, 25, 50, 75, 95]).tolist()
        quantiles = {"min": int(lengths.min()), "mean": float(lengths.mean()), "p5": p5, "p25": p25,
                     "p50": p50, "p75": p75, "p95": p95, "max": int(lengths.max())}
    return {"samples": len(store), "codes": total, "codebook_size": size, "active_codes": active,
            "active_share": active / size, "perplexity": perplexity(counts), "top_codes": top,
            "lengths": quantiles}


def fsq_digit_counts(counts: np.ndarray, levels) -> list[np.ndarray]:
    """Per FSQ dimension, how often each of its L values is used. index = sum(digit * basis) with
    basis = cumprod([1] + levels[:-1]); a dead dimension is invisible in the flat counts."""
    basis = np.cumprod([1, *levels[:-1]])
    index = np.arange(len(counts))
    return [np.bincount((index // b) % L, weights=counts, minlength=L).astype(np.int64)
            for b, L in zip(basis.tolist(), levels)]


def plot_stats(store, out_png) -> None:
    """Write the stats figure: rank-frequency, lengths, usage per FSQ dimension / codebook row."""
    from tokstore.plots import plot_stats as draw

    counts = code_counts(store)
    per_dimension = None  # codebook quantizers, and imported stores that record no model
    config = Provenance.from_meta(store.meta).config()
    if config is not None:
        if config.quantizer == "FSQ":
            per_dimension = fsq_digit_counts(counts, config.fsq_levels)
    draw(out_png, counts, store.lengths, per_dimension)


# ---------------------------------------------------------------------------------------------
# decode


def decode_sample(store, name: str, checkpoint, device: str = "cpu", mean_file=None,
                  std_file=None) -> np.ndarray:
    """One sample's codes -> VQVAE.decode -> de-normalized motion, (T, D) float32 in the
    original feature space."""
    from vqvae import denormalize

    codes = store.codes(store.index_of(name)).astype(np.int64)
    mean, std = recorded_stats(store.meta, mean_file, std_file)
    model = load_recorded_model(store.meta, checkpoint, device)
    motion = model.decode(codes[None])[0].cpu().numpy()
    return denormalize(motion, mean, std)


# ---------------------------------------------------------------------------------------------
# verify


@dataclass
class Reencoding:
    """Agreement between stored codes and a fresh encoding of the same source motions."""
    samples: list[str] = field(default_factory=list)
    exact: int = 0          # samples whose codes match exactly
    tokens: int = 0         # positions compared (the longer of stored and fresh, per sample)
    agreeing: int = 0       # positions where stored and fresh codes are equal
    differing: list[str] = field(default_factory=list)
    checkpoint_matches: bool | None = None  # vs meta checkpoint_sha256; None when not recorded

    @property
    def agreement(self) -> float:
        return self.agreeing / self.tokens if self.tokens else 1.0


@dataclass
class VerifyReport:
    problems: list[str]
    reencoding: Reencoding | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def reencode(store, checkpoint, k: int, precision: str | None = None, seed: int = 0,
             device: str = "cpu", mean_file=None, std_file=None) -> Reencoding:
    """Encode K random samples again, one at a time, from their source motions, as the build did
    (crop from frame 0 to whole units, normalized with the statistics' own dtypes); precision
    defaults to the build's. fp32 goes through the build's exact path (vqvae.exact: CPU, one
    intra-op thread, whatever `device` says), so a correct store passes on any core count."""
    from vqvae.exact import ExactEncoder

    meta = store.meta
    provenance = Provenance.from_meta(meta)
    motion_dir = (provenance.source_paths or {}).get("motion_dir")
    if not motion_dir:
        raise InspectError("the store records no source motion_dir, so nothing can be re-encoded")
    mean, std = recorded_stats(meta, mean_file, std_file)
    precision = precision or provenance.precision or "fp32"
    exact = precision == "fp32"
    model = load_recorded_model(meta, checkpoint, "cpu" if exact else device)
    engine = ExactEncoder(model if model.device.type == "cpu"
                          else load_recorded_model(meta, checkpoint, "cpu"), mean, std)
    try:
        return _reencode(store, engine, model, motion_dir, k, precision, seed, checkpoint)
    finally:
        engine.close()


def _reencode(store, engine, model, motion_dir, k, precision, seed, checkpoint) -> Reencoding:
    from tokstore.build_encode import fast_codes_alone
    from tokstore.loading import load_motion
    from vqvae import file_sha256

    result = Reencoding()
    recorded_sha = Provenance.from_meta(store.meta).checkpoint_sha256
    if recorded_sha:
        result.checkpoint_matches = file_sha256(checkpoint) == recorded_sha
    picks = np.random.default_rng(seed).choice(len(store), size=min(k, len(store)), replace=False)
    unit = model.unit_length
    for i in tqdm(sorted(picks.tolist()), desc="re-encode", unit="motion", file=sys.stderr):
        sample = store[i]
        path = Path(motion_dir) / f"{sample.name}.npy"
        try:
            motion = load_motion(path, unit, engine.mean, engine.std)
        except (OSError, ValueError) as exc:
            raise InspectError(f"cannot re-encode {sample.name!r}: {path}: {exc}") from None
        if precision == "fp32":
            fresh = engine.encode_one(motion).astype(np.int64)
        else:  # an inexact build's codes, as its device computes them (CPU: on one thread)
            fresh = fast_codes_alone(model, engine, motion, precision).astype(np.int64)
        stored = sample.codes.astype(np.int64)
        overlap = min(len(stored), len(fresh))
        same = int((stored[:overlap] == fresh[:overlap]).sum())
        result.samples.append(sample.name)
        result.tokens += max(len(stored), len(fresh))
        result.agreeing += same
        if same == len(stored) == len(fresh):
            result.exact += 1
        else:
            result.differing.append(sample.name)
    return result


def verify_store(store, checkpoint=None, reencode_k: int = 0, precision: str | None = None,
                 seed: int = 0, device: str = "cpu", mean_file=None, std_file=None,
                 min_agreement: float = 1.0) -> VerifyReport:
    """The store's own check (structure, ranges, names, counts, per-array checksums), the recorded
    config against the store, then, with a checkpoint, re-encoding agreement."""
    problems = list(store.check())
    config = Provenance.from_meta(store.meta).config()
    if config is not None:
        size = config.codebook_size
        if size != store.codebook_size:
            problems.append(f"model_config: its codebook size {size} differs from the store's "
                            f"{store.codebook_size}")
    report = VerifyReport(problems)
    if checkpoint is not None and reencode_k > 0:
        from vqvae import VQVAEError

        try:
            report.reencoding = found = reencode(store, checkpoint, reencode_k, precision, seed,
                                                 device, mean_file, std_file)
        except (TokstoreError, VQVAEError) as exc:  # a checkpoint that does not fit, a lost source
            problems.append(f"re-encoding: {exc}")
            return report
        if found.agreement < min_agreement:
            problems.append(f"re-encoding: token agreement {found.agreement:.2%} is below "
                            f"{min_agreement:.2%}; samples that differ: {', '.join(found.differing)}")
    return report
