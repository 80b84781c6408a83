"""Loading preflighted entries for the encoder: batch plans, then batches read in parallel.

`plan_batches` groups the entries into windows (consecutive in split order) and, within each,
batches of equal cropped length; `iter_batches` loads, crops (start 0) and normalizes them in
DataLoader workers and yields equal-length float32 `MotionBatch`es, each entry that fails to load
as a `LoadFailure`, and a `WindowEnd` after each window. `load_motion` is one motion the same way.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

from vqvae.normalize import normalize

from .lifetime import worker_init
from .sources import (Entry, NotARegularFile, one_line_reason, open_regular, read_captions,
                      read_npy_header)


class PlannedBatch(NamedTuple):
    window_id: int
    entry_ids: np.ndarray  # int64 indices into the entries list, ascending
    length: int  # cropped frames of every motion in the batch


@dataclass
class BatchPlan:
    """Batches of equal cropped length, grouped into consecutive windows of entries.

    Window w holds entries[windows[w][0]:windows[w][1]]; its batches, ordered by length, all come
    before the next window's. The build encodes a window, writes it in split order, commits."""

    batches: list[PlannedBatch]
    windows: list[tuple[int, int]]


def plan_batches(entries: list[Entry], batch_frames: int, window: int) -> BatchPlan:
    """Windows of at most `window` entries in split order; within one, batches of equal cropped
    length m holding at most max(1, batch_frames // m) motions (B * m <= batch_frames unless one
    motion alone is longer). Every entry lands in exactly one batch."""
    if batch_frames < 1 or window < 1:
        raise ValueError("batch_frames and window must be positive")
    lengths = np.fromiter((e.cropped_frames for e in entries), np.int64, len(entries))
    batches, windows = [], []
    for window_id, start in enumerate(range(0, len(entries), window)):
        stop = min(start + window, len(entries))
        windows.append((start, stop))
        ids = start + np.argsort(lengths[start:stop], kind="stable")
        for group in np.split(ids, np.flatnonzero(np.diff(lengths[ids])) + 1):
            m = int(lengths[group[0]])
            per_batch = max(1, batch_frames // max(m, 1))
            for i in range(0, len(group), per_batch):
                batches.append(PlannedBatch(window_id, group[i:i + per_batch], m))
    return BatchPlan(batches, windows)


class MotionBatch(NamedTuple):
    """Equal-length motions for the encoder: `motions` (B, m, D) float32, normalized. `entry_ids`
    (int64, ascending) index the entries given to iter_batches; `texts` are their caption lines."""

    window_id: int
    entry_ids: np.ndarray
    names: list[str]
    texts: list[list[str]]
    motions: np.ndarray


class LoadFailure(NamedTuple):
    """An entry that passed preflight but failed to load (NaN/Inf values, file changed since)."""

    window_id: int
    entry_id: int
    name: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class WindowEnd(NamedTuple):
    """Every entry of entries[start:stop] has been yielded, in a MotionBatch or a LoadFailure."""

    window_id: int
    start: int
    stop: int

    @property
    def n_entries(self) -> int:
        return self.stop - self.start


class _PackedStrings:
    """Strings in one byte array. Forked DataLoader workers reading a list of Python objects bump
    their refcounts and so copy the parent's pages (2M entries: ~0.8 GB per worker); a numpy array
    has no per-item objects to touch."""

    def __init__(self, strings):
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]  # paths are bytes
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), np.uint8)

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8",
                                                                               "surrogateescape")


def load_motion(path, unit_length: int, mean, std) -> np.ndarray:
    """One motion as the build encodes it, without the batching: cropped from frame 0 to whole
    units and normalized with the statistics' own dtypes, (m, D) float32. For re-encoding a few
    samples (verify, the build's agreement measurement)."""
    motion = np.load(path, allow_pickle=False)
    return normalize(motion[:len(motion) // unit_length * unit_length], mean, std)


def _read_motion(path: str, shape: tuple, scratch: np.ndarray) -> np.ndarray:
    """The array in a .npy file, read into `scratch` when it is C-ordered float32 (np.load
    allocates fresh memory for every file, which made loading several times slower)."""
    with open_regular(path, kind="motion file") as f:
        file_shape, dtype, fortran, offset = read_npy_header(f)
        if file_shape != shape or dtype.kind != "f":
            raise ValueError(f"changed since preflight: now {dtype} {file_shape}")
        if dtype == scratch.dtype and not fortran:
            motion = scratch[:shape[0]]
        else:
            motion = np.empty(shape[::-1] if fortran else shape, dtype)
        f.seek(offset)
        if f.readinto(motion) != motion.nbytes:
            raise ValueError("truncated .npy")
    return motion.T if fortran else motion


def _load_one(path: str, frames: int, scratch: np.ndarray, mean, std,
              out: np.ndarray) -> str | None:
    """Read, crop (start 0), normalize a motion into `out` (m frames): a failure reason or None."""
    try:
        motion = _read_motion(path, (frames, out.shape[-1]), scratch)
    except FileNotFoundError:
        return "missing motion file"
    except NotARegularFile as exc:
        return exc.reason
    except (OSError, ValueError) as exc:
        return f"unreadable .npy ({one_line_reason(exc)})"
    length = len(out)
    normalize(motion[:length], mean, std, out=out)
    # NaN/Inf in the input stay NaN/Inf after normalizing, so checking `out` finds them
    if not (np.isfinite(out).all() and np.isfinite(motion[length:]).all()):
        bad = int((~np.isfinite(motion)).sum())
        return f"contains {bad} NaN or Inf values" if bad else "normalizes beyond float32 range"
    return None


class _PlannedBatchDataset:
    """Map-style dataset whose item is one whole planned batch with ONE array: a DataLoader moving
    one tensor per motion between processes manages only ~1,000 files/s."""

    def __init__(self, entries: list[Entry], plan: BatchPlan, mean: np.ndarray, std: np.ndarray):
        self.motion_paths = _PackedStrings(e.motion_path for e in entries)
        self.text_paths = _PackedStrings(e.text_path for e in entries)
        self.frames = np.fromiter((e.frames for e in entries), np.int64, len(entries))
        self.plan, self.mean, self.std = plan, mean, std

    def __len__(self) -> int:
        return len(self.plan.batches)

    def __getitem__(self, i: int):
        planned = self.plan.batches[i]
        ids = planned.entry_ids.tolist()
        dim = len(self.mean)
        motions = np.empty((len(ids), planned.length, dim), np.float32)
        scratch = np.empty((int(self.frames[ids].max()), dim), np.float32)  # before cropping
        ok, texts, failures = [], [], []
        for entry_id in ids:
            path = self.motion_paths[entry_id]
            reason = _load_one(path, int(self.frames[entry_id]), scratch, self.mean, self.std,
                               motions[len(ok)])
            if reason is None:
                path = self.text_paths[entry_id]
                try:
                    texts.append(read_captions(path))
                except NotARegularFile as exc:
                    reason = exc.reason
                except (OSError, UnicodeDecodeError) as exc:
                    reason = f"unreadable caption file ({one_line_reason(exc)})"
            if reason is None:
                ok.append(entry_id)
            else:
                failures.append((entry_id, path, reason))
        return i, np.array(ok, np.int64), texts, failures, motions[:len(ok)]


def _uncollated(item):
    """DataLoader collate_fn keeping the worker's numpy array: pickled down a pipe, it needs no
    /dev/shm (often 64 MB in containers, less than a batch); on 2 cores no slower than a tensor."""
    return item


def iter_batches(entries: list[Entry], mean: np.ndarray, std: np.ndarray, unit_length: int,
                 batch_frames: int, window: int, workers: int = 0
                 ) -> Iterator[MotionBatch | LoadFailure | WindowEnd]:
    """Load `entries` (all of a split's, or those a resumed build still has to do) in plan order:
    for each planned batch its LoadFailures, then its MotionBatch (none if every motion failed);
    after a window's last batch, its WindowEnd. `workers` DataLoader processes load ahead;
    0 loads in this process."""
    from torch.utils.data import DataLoader

    stale = [e.name for e in entries if e.cropped_frames % unit_length or not e.cropped_frames]
    if stale:
        raise ValueError(f"entries not preflighted with unit length {unit_length}: {stale[:3]}")
    plan = plan_batches(entries, batch_frames, window)
    last_batch_of_window = {b.window_id: i for i, b in enumerate(plan.batches)}
    # the statistics in their own dtypes: the original normalizes with numpy's promotion of them
    dataset = _PlannedBatchDataset(entries, plan, np.asarray(mean), np.asarray(std))
    # workers end with this process and hold none of its locks (the store's): see lifetime.py
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_uncollated, prefetch_factor=4 if workers else None,
                        worker_init_fn=functools.partial(worker_init, os.getpid()) if workers
                        else None)
    batches = iter(loader)
    try:
        for i, ok, texts, failures, motions in batches:
            window_id = plan.batches[i].window_id
            for entry_id, path, reason in failures:
                yield LoadFailure(window_id, entry_id, entries[entry_id].name, path, reason)
            if len(ok):
                yield MotionBatch(window_id, ok, [entries[j].name for j in ok.tolist()], texts,
                                  motions)
            if last_batch_of_window[window_id] == i:
                yield WindowEnd(window_id, *plan.windows[window_id])
    finally:
        # the workers stop now, while the caller still handles signals, not whenever the last
        # traceback that holds the iterator is dropped (torch has no public close)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
