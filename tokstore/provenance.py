"""The store's provenance as one typed record: the meta keys the build writes and the readers
(inspect, legacy, torch, a resuming build) pick out of a store's meta.

`Provenance.from_meta(meta)` reads any store's meta (keys a store does not record read as None,
the older single `stats_dtype` stands in for `mean_dtype` / `std_dtype`); `.to_meta()` gives back
exactly the keys and values the build writes, in the order it writes them, so that a store's meta
and bytes do not depend on this record existing. Keys outside it (an importer's `imported_from`)
are kept in `other` and written back after the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

# the keys whose values decide the codes: a store made with other values must not be extended
CODE_DECIDING = {"checkpoint_sha256": "checkpoint", "model_config": "model config",
                 "stats_sha256": "normalization statistics", "crop_policy": "crop policy"}
# the keys a resumed build brings up to date (the first run's identity stays), in writing order
RESUMED = ("device", "precision", "torch_version", "source_paths", "encoders", "exactness_mode")
# the keys every commit rewrites, in writing order
COMMITTED = ("skipped", "exactness", "build")


def skipped_entry(name: str, path: str, reason: str) -> dict:
    """One entry of meta `skipped`: a split entry the build left out, and why."""
    return {"name": name, "path": path, "reason": reason}


@dataclass
class BuildProgress:
    """Meta `build`: how far through its split the build is (the resume point)."""

    next_entry: int = 0  # split index the next run starts at
    split_entries: int | None = None
    split_sha256: str | None = None
    complete: bool = False

    @classmethod
    def from_dict(cls, raw: dict | None) -> BuildProgress:
        raw = raw or {}
        return cls(int(raw.get("next_entry", 0)), raw.get("split_entries"),
                   raw.get("split_sha256"), bool(raw.get("complete", False)))

    def to_dict(self) -> dict:
        return {"next_entry": self.next_entry, "split_entries": self.split_entries,
                "split_sha256": self.split_sha256, "complete": self.complete}

    def finished(self, split_sha256: str) -> bool:
        """True when the build of this very split (by its sha256) has completed."""
        return self.complete and self.split_sha256 == split_sha256


@dataclass
class Provenance:
    """How a store's codes were made. None: the store does not record it. Field order is the
    order the build writes the keys in (see to_meta)."""

    legacy_code_dtype: str | None = None  # "int32" | "int64": what the original wrote
    model_config: dict | None = None  # VQVAEConfig.to_dict()
    checkpoint_sha256: str | None = None
    stats_sha256: str | None = None
    crop_policy: str | None = None
    precision: str | None = None  # of the latest run
    device: str | None = None  # of the latest run
    torch_version: str | None = None  # of the latest run
    exactness_mode: str | None = None  # "exact" | "inexact <device> <precision>" | "mixed"
    encoders: list[dict] | None = None  # every {device, precision, mode, torch_version, cpu_capability}
    source_paths: dict | None = None  # the dataset layout (SourceLayout.to_dict())
    mean: list[float] | None = None  # the statistics themselves, for decode and verify
    std: list[float] | None = None
    stats_dtype: str | None = None  # one dtype for both: what stores before mean/std_dtype read
    mean_dtype: str | None = None
    std_dtype: str | None = None
    skipped: list[dict] | None = None  # {name, path, reason} of every split entry left out
    exactness: dict | None = None  # how the codes were checked (see the exactness contract)
    build: BuildProgress | None = None
    other: dict = field(default_factory=dict)  # meta keys outside this record, kept as they are

    @classmethod
    def from_meta(cls, meta: dict | None) -> Provenance:
        meta = dict(meta or {})
        known = {f.name for f in fields(cls)} - {"other"}
        values = {key: meta.pop(key) for key in list(meta) if key in known}
        if "build" in values:
            values["build"] = BuildProgress.from_dict(values["build"])
        return cls(**values, other=meta)

    def to_meta(self, only: tuple[str, ...] | None = None) -> dict:
        """The meta keys this record holds (None fields left out), in writing order; `only`:
        just those keys, in that order (an update_meta of some of them)."""
        names = only or tuple(f.name for f in fields(self) if f.name != "other")
        meta = {}
        for name in names:
            value = getattr(self, name)
            if value is not None:
                meta[name] = value.to_dict() if isinstance(value, BuildProgress) else value
        if only is None:
            meta.update(self.other)
        return meta

    # ---- what readers derive from it

    @property
    def stat_dtypes(self) -> tuple[str, str]:
        """(mean's dtype, std's dtype) as recorded; stores before the pair: `stats_dtype` for
        both, and float64 where even that is missing."""
        both = self.stats_dtype or "float64"
        return self.mean_dtype or both, self.std_dtype or both

    def recorded_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The recorded mean and std, each in its recorded dtype (None: not recorded)."""
        if self.mean is None or self.std is None:
            return None
        mean_dtype, std_dtype = self.stat_dtypes
        return np.asarray(self.mean, dtype=np.dtype(mean_dtype)), np.asarray(self.std,
                                                                             dtype=np.dtype(std_dtype))

    def config(self):
        """The VQVAEConfig the store was built with (None: not recorded)."""
        from vqvae import VQVAEConfig

        return VQVAEConfig.from_dict(self.model_config) if self.model_config else None

    @property
    def unit_length(self) -> int | None:
        """Frames per code of the recorded model (None: not recorded)."""
        config = self.config()
        return config.unit_length if config else None

    @property
    def progress(self) -> BuildProgress:
        """The resume point (a store without one: nothing done yet)."""
        return self.build or BuildProgress()
