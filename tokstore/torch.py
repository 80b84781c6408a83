"""Training-side reading of a store: a map-style dataset, a length-bucketing batch sampler and a
collate that builds MotionMillion's training layout.

The original training loader unpickles the whole all_data.pkl in every process. Here each process
(main and every DataLoader worker) opens the store itself, lazily, and reads one sample per item;
nothing but small numpy arrays and the path crosses a fork or a spawn. The collate runs in the
workers, so each batch crosses back to the main process as one token tensor plus its lengths.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.random  # noqa: F401  (imported once here, not lazily in every worker)
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from .errors import TokstoreError
from .provenance import Provenance
from .sources import read_split
from .store.format import crc32

HUMANML3D_FPS = 20.0
KEEP, DROP_FIRST, DROP_LAST = 0, 1, 2
LAYOUT_MOTIONMILLION, LAYOUT_T2M_GPT = "motionmillion", "t2m-gpt"   # see collate_codes
LAYOUTS = (LAYOUT_MOTIONMILLION, LAYOUT_T2M_GPT)


class LoaderError(TokstoreError):
    """Bad arguments to the dataset, sampler or collate (unknown split names, bad state, ...)."""


# --------------------------------------------------------------------------- captions

def plain_captions(lines: Sequence[str]) -> list[str]:
    """Caption lines as the original MotionMillion loader keeps them: stripped, blank ones dropped.

    A sample "has no captions" when this list is empty: no lines at all, or only blank lines (the
    original skips the first case and crashes on the second, in random.choice of an empty list).
    """
    return [s for s in (line.strip() for line in lines) if s]


class HumanML3DCaption(NamedTuple):
    text: str
    start: float   # seconds; 0.0 with end 0.0 means the whole motion
    end: float


def parse_humanml3d_line(line: str) -> HumanML3DCaption | None:
    """Parse `caption#tokens#start#end` as T2M-GPT does: NaN times read as 0.0.

    Returns None for a line T2M-GPT skips (fewer than four fields, unreadable times, blank text).
    """
    fields = line.strip().split("#")
    caption = fields[0].strip()
    if len(fields) < 4 or not caption:
        return None
    try:
        start, end = float(fields[2]), float(fields[3])
    except ValueError:
        return None
    start = 0.0 if math.isnan(start) else start
    end = 0.0 if math.isnan(end) else end
    return HumanML3DCaption(caption, start, end)


def subclip_bounds(start: float, end: float, fps: float, unit_length: int) -> tuple[int, int]:
    """Code range [lo, hi) of a sub-clip given in seconds, with T2M-GPT's truncating arithmetic."""
    return int(start * fps / unit_length), int(end * fps / unit_length)


# --------------------------------------------------------------------------- per-process state

CAPTION_STREAM, AUGMENT_STREAM = 0, 1   # so that the dataset's and the collate's draws differ


def _process_rng(seed: int | None, stream: int) -> np.random.Generator:
    """A generator for this process: from `seed` in the main process; in a DataLoader worker also
    from the seed PyTorch gives that worker (drawn from the loader's generator, new each epoch), so
    workers never share a stream and `DataLoader(generator=...)` makes every draw reproducible.
    Without a seed, the main process draws fresh entropy."""
    info = get_worker_info()
    if seed is None and info is None:
        return np.random.default_rng()
    return np.random.default_rng([stream, seed is not None, seed or 0,
                                  info is not None, info.seed if info else 0])


class _PerProcess:
    """Holds what must never cross a fork or a pickle (an open store, a random generator): a
    dict that starts empty in each process, recognised by its pid."""

    def __init__(self):
        self._pid, self._values = None, {}

    def for_this_process(self) -> dict:
        """The dict of this process's values: empty at first in every process."""
        if self._pid != os.getpid():
            self._pid, self._values = os.getpid(), {}
        return self._values

    def __reduce__(self):
        return (_PerProcess, ())


# --------------------------------------------------------------------------- dataset

class CodeItem(NamedTuple):
    codes: torch.Tensor          # 1-D, the dataset's dtype
    caption: str | list[str]     # one caption drawn at random, or all of them
    name: str | None             # None when the dataset was made with names=False


class CodeItems(MutableSequence):
    """A batch of items as `CodeDataset.__getitems__` reads it: every code in one flat tensor,
    split by `lengths`. It is a list-like sequence of CodeItem for any collate (torch's contract
    for __getitems__ is a list): a collate may sort, shuffle, add or edit it in place, which
    turns it into a plain list of CodeItem inside. `collate_codes` uses the flat tensor directly
    while the batch is as read (`as_read`)."""

    __slots__ = ("codes", "lengths", "captions", "names", "_ends", "_list")

    def __init__(self, codes: torch.Tensor, lengths: np.ndarray, captions: list, names: list):
        self.codes, self.lengths, self.captions, self.names = codes, lengths, captions, names
        self._ends = np.cumsum(lengths).tolist()
        self._list = None    # the items, once a collate changed the batch

    @property
    def as_read(self) -> bool:
        return self._list is None

    def _items(self) -> list:
        if self._list is None:
            self._list = [self[k] for k in range(len(self))]
        return self._list

    def __len__(self) -> int:
        return len(self.captions) if self._list is None else len(self._list)

    def __getitem__(self, k):
        if self._list is not None:
            return self._list[k]
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        end = self._ends[k]
        return CodeItem(self.codes[end - int(self.lengths[k]):end], self.captions[k], self.names[k])

    def __setitem__(self, k, value):
        self._items()[k] = value

    def __delitem__(self, k):
        del self._items()[k]

    def insert(self, k, value):
        self._items().insert(k, value)

    def sort(self, *, key=None, reverse: bool = False):
        self._items().sort(key=key, reverse=reverse)

    def __add__(self, other):
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)


def split_indices(store, split: str | os.PathLike) -> np.ndarray:
    """Store indices of a split file's names, in its order (LoaderError naming a missing one)."""
    names = read_split(split)
    index_of = {name: i for i, name in enumerate(store.names)}  # one pass, not one lookup each
    missing = [name for name in names if name not in index_of]
    if missing:
        raise LoaderError(f"{len(missing)} name(s) of split {split} are not in the store "
                          f"{store.path}, e.g. {missing[0]!r}")
    return np.fromiter((index_of[name] for name in names), dtype=np.int64, count=len(names))


def check_token_dtype(dtype, pad_token: int) -> None:
    """Tokens (codes, then end and pad, the largest) must fit `dtype` exactly: int16 would wrap
    a 64K codebook's codes, float16 round them onto the end token, silently."""
    if not isinstance(dtype, torch.dtype) or dtype.is_floating_point or dtype.is_complex or \
            dtype == torch.bool or torch.iinfo(dtype).max < pad_token:
        raise LoaderError(f"dtype {dtype} cannot hold the store's tokens (up to the pad token "
                          f"{pad_token}): use an integer torch dtype that does, e.g. torch.int64")


class CodeDataset(Dataset):
    """Item i -> CodeItem(codes, caption, name), read from the store at `store_path`.

    Selection: the store's `select` filters (min_len, max_len, name_glob, text_contains) and/or a
    split file of names (its order is kept). `drop_uncaptioned` drops samples with no non-blank
    caption line, as the original training loader skips names whose text list is empty.

    caption_format "plain": every non-blank line is a caption. "humanml3d": lines are
    `caption#tokens#start#end`, read as T2M-GPT does: lines with start = end = 0 caption the whole
    motion (one item per sample that has any); every other valid line becomes its own item holding
    the codes of its sub-clip, `codes[int(start*fps/unit):int(end*fps/unit)]`, named
    `name_{start:f}_{end:f}`; a sub-clip that rounds to no code is skipped. unit_length comes from
    the store's `model_config` meta, else from the argument.

    One caption is drawn per call (seedable: `seed`, plus the DataLoader's per-worker seed), or
    all captions are returned with `all_captions=True`; captions come stripped. `names=False`
    leaves names undecoded (None), which training loops rarely need.

    A DataLoader reads a whole batch through `__getitems__`: offsets gathered at once, codes
    joined in one flat tensor, names and captions decoded per batch (for the plain caption
    format; HumanML3D items are read one by one).

    `lengths[i]` is item i's code count (for LengthBucketSampler); `end_token` and `pad_token`
    are the store's. The store is opened here to select, then closed: each process that reads
    items (the main one or a worker, forked or spawned) opens its own on first use.
    """

    def __init__(self, store_path: str | os.PathLike, *, min_len: int | None = None,
                 max_len: int | None = None, name_glob: str | None = None,
                 text_contains: str | None = None, split: str | os.PathLike | None = None,
                 drop_uncaptioned: bool = True, caption_format: str = "plain",
                 all_captions: bool = False, fps: float = HUMANML3D_FPS,
                 unit_length: int | None = None, seed: int | None = None,
                 dtype: torch.dtype = torch.int64, names: bool = True):
        if caption_format not in ("plain", "humanml3d"):
            raise LoaderError(f"caption_format must be 'plain' or 'humanml3d', "
                              f"not {caption_format!r}")
        from . import TokenStore

        self.store_path = str(store_path)
        self.caption_format = caption_format
        self.all_captions = all_captions
        self.seed = seed
        self.dtype = dtype
        self.with_names = names
        self._local = _PerProcess()
        with TokenStore.open(self.store_path) as store:
            self.end_token = int(store.end_token)
            self.pad_token = int(store.pad_token)
            check_token_dtype(dtype, self.pad_token)
            indices = self._select(store, min_len, max_len, name_glob, text_contains, split)
            if caption_format == "plain":
                self._init_plain(store, indices, drop_uncaptioned)
            else:
                self._init_humanml3d(store, indices, drop_uncaptioned, fps,
                                     self._unit_length(store.meta, unit_length))

    # -- construction

    @staticmethod
    def _select(store, min_len, max_len, name_glob, text_contains, split) -> np.ndarray:
        filters = dict(min_len=min_len, max_len=max_len, name_glob=name_glob,
                       text_contains=text_contains)
        if any(v is not None for v in filters.values()):
            indices = np.asarray(store.select(**filters), dtype=np.int64)
        else:
            indices = np.arange(len(store), dtype=np.int64)
        if split is None:
            return indices
        wanted = split_indices(store, split)
        return wanted[np.isin(wanted, indices)]

    def _init_plain(self, store, indices, drop_uncaptioned):
        if drop_uncaptioned:
            indices = indices[store.captioned()[indices]]
        self._sample = indices
        self._subclips = self._captions = None
        self.lengths = np.asarray(store.lengths, dtype=np.int64)[indices]

    def _init_humanml3d(self, store, indices, drop_uncaptioned, fps, unit_length):
        lengths = np.asarray(store.lengths, dtype=np.int64)
        sample, subclips, captions = [], [], []
        for i in indices.tolist():
            whole = []
            for parsed in filter(None, map(parse_humanml3d_line, store.texts(i))):
                if parsed.start == 0.0 and parsed.end == 0.0:
                    whole.append(parsed.text)
                    continue
                lo, hi = subclip_bounds(parsed.start, parsed.end, fps, unit_length)
                if lo < hi:
                    sample.append(i)
                    subclips.append((lo, hi, f"_{parsed.start:f}_{parsed.end:f}"))
                    captions.append([parsed.text])
            if whole or not drop_uncaptioned:
                sample.append(i)
                subclips.append(None)
                captions.append(whole)
        self._sample = np.asarray(sample, dtype=np.int64)
        self._subclips = subclips    # (first code, end code, name suffix), None: whole motion
        self._captions = captions
        # A sub-clip past the end of its motion is cut short by the slice; so is its length.
        self.lengths = np.asarray(
            [lengths[i] if clip is None else max(0, min(clip[1], lengths[i]) - clip[0])
             for i, clip in zip(sample, subclips)], dtype=np.int64)

    @staticmethod
    def _unit_length(meta, argument):
        from_meta = Provenance.from_meta(meta).unit_length  # None: not recorded
        if from_meta is not None and argument is not None and from_meta != argument:
            raise LoaderError(f"unit_length={argument} contradicts the store's model config "
                              f"({from_meta} frames per code)")
        unit_length = from_meta if from_meta is not None else argument
        if unit_length is None:
            raise LoaderError("the store's meta has no model_config to take unit_length from: "
                              "pass unit_length= (frames per code) for HumanML3D sub-clips")
        return unit_length

    # -- reading

    def _opened(self):
        """This process's store and generator, made on first use in each process."""
        local = self._local.for_this_process()
        if "ready" not in local:   # set last: another thread may read while this one sets up
            from . import TokenStore

            local["store"] = TokenStore.open(self.store_path)
            local["rng"] = _process_rng(self.seed, CAPTION_STREAM)
            local["ready"] = True
        return local["store"], local["rng"]

    def __len__(self) -> int:
        return len(self._sample)

    def _caption(self, captions: list[str], draw: float):
        if self.all_captions:
            return captions
        return captions[int(draw * len(captions))] if captions else ""

    def _tensor(self, codes: np.ndarray) -> torch.Tensor:
        codes = torch.from_numpy(codes.astype(np.int64))
        return codes if self.dtype == torch.int64 else codes.to(self.dtype)

    def __getitem__(self, item: int) -> CodeItem:
        store, rng = self._opened()
        sample = store[int(self._sample[item])]
        codes, name = sample.codes, sample.name if self.with_names else None
        if self._captions is None:
            captions = plain_captions(sample.texts)
        else:
            captions, clip = self._captions[item], self._subclips[item]
            if clip is not None:
                codes = codes[clip[0]:clip[1]]
                name = sample.name + clip[2] if self.with_names else None
        return CodeItem(self._tensor(codes), self._caption(captions, rng.random()), name)

    def __getitems__(self, items: Sequence[int]) -> CodeItems | list[CodeItem]:
        """A batch of items (what torch's fetcher asks for): the same items as `self[i]` each,
        with the same caption draws, read per batch rather than per item."""
        if self._captions is not None:
            return [self[i] for i in items]
        store, rng = self._opened()
        batch = store.batch(self._sample[np.asarray(items, dtype=np.int64)])
        draws = rng.random(len(batch.indices)).tolist()
        captions = [self._caption(plain_captions(lines), draw)
                    for lines, draw in zip(batch.texts(), draws)]
        names = batch.names() if self.with_names else [None] * len(captions)
        return CodeItems(self._tensor(batch.codes), batch.lengths, captions, names)

    def collator(self, block_size: int | None = None, augment: bool = False,
                 layout: str = LAYOUT_MOTIONMILLION,
                 text_slots: int | Callable[[str], int] = 1) -> CodeCollator:
        """The collate for this dataset's tokens (seeded like the dataset); see collate_codes
        for the layouts. MotionMillion: block_size=301, text_slots 1 (CLIP) or a callable."""
        return CodeCollator(self.end_token, self.pad_token, block_size=block_size,
                            augment=augment, seed=self.seed, dtype=self.dtype, layout=layout,
                            text_slots=text_slots)


# --------------------------------------------------------------------------- collate

class CodeBatch(NamedTuple):
    tokens: torch.Tensor      # (B, L): the rows, in the collate's layout
    lengths: torch.Tensor     # (B,) int64: number of codes before the end token (m_tokens_len)
    captions: list
    names: list               # str each, or None where the dataset was asked for no names
    text_lengths: torch.Tensor | None = None  # (B,) int64: text slots before the codes

    def __reduce__(self):
        """Pickled by value: a DataLoader worker then sends a batch as bytes through its pipe,
        two to three times faster (at 64 samples a batch) than torch's shared-memory handover,
        which costs a file descriptor and a map per storage."""
        return (_unpickled_batch, tuple(
            field.numpy() if isinstance(field, torch.Tensor) and field.device.type == "cpu"
            and not field.requires_grad else field for field in self))


def _unpickled_batch(*fields) -> CodeBatch:
    return CodeBatch(*(torch.from_numpy(f) if isinstance(f, np.ndarray) else f for f in fields))


def drop_choices(count: int, rng: np.random.Generator) -> np.ndarray:
    """The original's augmentation for `count` samples: with probability 1/3 drop one code, at the
    head or the tail with equal chance (so 1/6 each); else keep (T2M-GPT and MotionMillion draw
    `np.random.choice([False, False, True])`, then `np.random.choice([True, False])`)."""
    drop = rng.integers(3, size=count) == 2
    tail = rng.integers(2, size=count) == 0
    return np.where(drop, np.where(tail, DROP_LAST, DROP_FIRST), KEEP)


def _is_count(value) -> bool:
    """An int >= 0 (numpy's too), not a bool, float or str: int() would round or parse those."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
        and value >= 0


def _slot_count(value, caption) -> int:
    if not _is_count(value):
        raise LoaderError(f"text_slots gave {value!r} for the caption {caption!r}: it must "
                          f"give a count >= 0 (an int)")
    return int(value)


def _slot_counts(text_slots, captions, count: int) -> np.ndarray:
    """Text slots per row: a fixed count, or `text_slots(caption)` for each row's caption."""
    if callable(text_slots):
        return np.fromiter((_slot_count(text_slots(c), c) for c in captions), dtype=np.int64,
                           count=count)
    if not _is_count(text_slots):
        raise LoaderError(f"text_slots must be a count >= 0 or a callable on the caption, "
                          f"not {text_slots!r}")
    return np.full(count, int(text_slots), dtype=np.int64)


def _drop_choices(drops, count: int) -> np.ndarray:
    """`drops` as int64, one of KEEP / DROP_FIRST / DROP_LAST per item: numpy would broadcast a
    single one to the whole batch, and read any other nonzero value as a drop."""
    choice = np.asarray(drops)
    if choice.shape != (count,) or (count and (choice.dtype.kind not in "iu" or not np.isin(
            choice, (KEEP, DROP_FIRST, DROP_LAST)).all())):
        raise LoaderError(f"drops must hold KEEP, DROP_FIRST or DROP_LAST for each of the "
                          f"{count} items, not {drops!r}")
    return choice.astype(np.int64)


def collate_codes(items: Sequence[CodeItem], end_token: int, pad_token: int,
                  block_size: int | None = None, drops: Sequence[int] | None = None,
                  dtype: torch.dtype = torch.int64, layout: str = LAYOUT_MOTIONMILLION,
                  text_slots: int | Callable[[str], int] = 1) -> CodeBatch:
    """Rows of codes in one of two layouts, padded to `block_size` (or, when None, to the longest
    row of the batch):

    "motionmillion" (MotionMillion's Text2MotionDataset_motionmillion, max_motion_length 301):
        [pad] * t + codes + [end] + [pad] * (block_size - t - 1 - len(codes))
      t text slots first, which MotionMillion's LLaMA overwrites with the text feature: a fixed
      count (1: one CLIP feature, text_sum_way cls/mean/sum) or `text_slots(caption)` per row
      (a tokenizer-based encoder such as flan-t5 without summing: one slot per text token; an
      int, and already cut: MotionMillion cuts at max_text_length 150, the collate does not).
      A full row has no trailing pad.
    "t2m-gpt" (T2M-GPT, whose GPT takes the text feature as a separate first position):
        codes + [end] + [pad] * (block_size - 1 - len(codes))

    `drops[b]` (KEEP / DROP_FIRST / DROP_LAST) applies the augmentation first, as the originals
    do; a one-code sample is never emptied. Codes that do not fit are cropped to their head so
    that the end token always fits (the originals do not crop: their torch.stack fails on such a
    row); keeping the head keeps the part the caption starts with. `lengths` is the code count of
    each row, `text_lengths` its text slots (0 in the t2m-gpt layout).
    """
    if layout not in LAYOUTS:
        raise LoaderError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    count = len(items)
    batched = isinstance(items, CodeItems) and items.as_read
    if batched:
        full, captions, names = items.lengths, items.captions, items.names
    else:
        full = np.fromiter((item.codes.shape[0] for item in items), dtype=np.int64, count=count)
        captions, names = [item.caption for item in items], [item.name for item in items]
    if layout == LAYOUT_MOTIONMILLION:
        slots = _slot_counts(text_slots, captions, count)
    else:
        slots = np.zeros(count, dtype=np.int64)
    if block_size is not None and not _is_count(block_size):
        raise LoaderError(f"block_size must be an int or None, not {block_size!r}")
    choice = np.zeros(count, np.int64) if drops is None else _drop_choices(drops, count)
    choice = np.where(full > 1, choice, KEEP)
    head = (choice == DROP_FIRST).astype(np.int64)
    lengths = full - (choice != KEEP)
    if block_size is not None:
        if (slots + 1 > block_size).any():
            raise LoaderError(f"a row of {int(slots.max())} text slots leaves no room for the "
                              f"end token in block_size {block_size}")
        lengths = np.minimum(lengths, block_size - 1 - slots)
    width = block_size if block_size is not None else int((slots + lengths).max(initial=0)) + 1
    # One gather and one scatter for the whole batch, in numpy: torch costs microseconds per
    # call, and its indexed assignment a millisecond on a batch (it spins up its thread pool).
    total = int(lengths.sum())
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(np.cumsum(full) - full + head, lengths) + within
    row_start = np.arange(count) * width + slots
    target = np.repeat(row_start, lengths) + within
    tokens, counts = _batch_tensors(count, width, dtype)
    rows = tokens.numpy().reshape(-1)
    rows.fill(pad_token)
    if total:
        flat = items.codes if batched else torch.cat([item.codes for item in items])
        rows[target] = flat.numpy()[source]
    rows[row_start + lengths] = end_token
    counts.numpy()[:] = (lengths, slots)
    return CodeBatch(tokens, counts[0], list(captions), list(names), counts[1])


def _batch_tensors(count: int, width: int, dtype: torch.dtype):
    """(tokens (count, width), counts (2, count) int64) in as few storages as the dtypes allow: a
    DataLoader worker sends each storage to the main process on its own, at a fixed cost that
    (with 64-sample batches) outweighs reading the samples."""
    if dtype != torch.int64:
        return torch.empty((count, width), dtype=dtype), torch.empty((2, count), dtype=torch.int64)
    buffer = torch.empty(count * width + 2 * count, dtype=torch.int64)
    return buffer[:count * width].view(count, width), buffer[count * width:].view(2, count)


@dataclass
class CodeCollator:
    """`collate_codes` with fixed tokens and the augmentation drawn from a per-process generator;
    a plain picklable object so that it runs inside spawned workers too (a `text_slots`
    callable must then be picklable: a module-level function, not a lambda)."""

    end_token: int
    pad_token: int
    block_size: int | None = None
    augment: bool = False
    seed: int | None = None
    dtype: torch.dtype = torch.int64
    layout: str = LAYOUT_MOTIONMILLION
    text_slots: int | Callable[[str], int] = 1

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise LoaderError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        fixed = 0 if self.layout == LAYOUT_T2M_GPT or callable(self.text_slots) else \
            self.text_slots
        if not callable(fixed) and not _is_count(fixed):
            raise LoaderError(f"text_slots must be a count >= 0 or a callable on the caption, "
                              f"not {self.text_slots!r}")
        if self.block_size is not None and not _is_count(self.block_size):
            raise LoaderError(f"block_size must be an int or None, not {self.block_size!r}")
        if self.block_size is not None and self.block_size < fixed + 1:
            raise LoaderError(f"block_size must leave room for {fixed} text slot(s) and the end "
                              f"token, not {self.block_size}")
        self._local = _PerProcess()

    def __call__(self, items: Sequence[CodeItem]) -> CodeBatch:
        drops = None
        if self.augment:
            local = self._local.for_this_process()
            if not local:
                local["rng"] = _process_rng(self.seed, AUGMENT_STREAM)
            drops = drop_choices(len(items), local["rng"])
        return collate_codes(items, self.end_token, self.pad_token, self.block_size, drops,
                             self.dtype, self.layout, self.text_slots)


# --------------------------------------------------------------------------- sampler

class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar lengths, for `DataLoader(batch_sampler=...)`.

    Each epoch: shuffle all indices (seed, epoch), sort each pool of `pool_batches` batches by
    length, cut the pools into batches, shuffle the batches. Under DDP every rank takes an
    interleaved, disjoint share of equally many batches (the last len % num_replicas batches of
    the epoch's order are dropped, a different few each epoch). `state_dict()` records the epoch
    and how many batches were handed out; after `load_state_dict()` the next iteration continues
    that epoch's order where it stopped.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, *,
                 pool_batches: int = 64, drop_last: bool = False, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        if not (_is_count(batch_size) and _is_count(pool_batches)) or batch_size < 1 or \
                pool_batches < 1:
            raise LoaderError(f"batch_size and pool_batches must be positive ints, not "
                              f"{batch_size!r} and {pool_batches!r}")
        if not _is_count(seed):
            raise LoaderError(f"seed must be an int >= 0, not {seed!r}")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if not (_is_count(rank) and _is_count(num_replicas)) or not 0 <= rank < num_replicas:
            raise LoaderError(f"rank {rank!r} is not an int in [0, {num_replicas!r})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._lengths_crc32 = crc32(self.lengths.astype("<i8", copy=False))  # see _order_args
        # plain Python values: torch.load(weights_only=True) refuses numpy scalars in a state
        self.batch_size = int(batch_size)
        self.pool_batches = int(pool_batches)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self._resume_at = 0   # batches of self.epoch to skip at the next iteration
        self._handed_out = 0  # batches of self.epoch handed out so far

    def _num_batches_total(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self._num_batches_total() // self.num_replicas

    def epoch_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch, in order."""
        size, num_batches = self.batch_size, self._num_batches_total()
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.drop_last:  # drop a random few, not the longest of the last pool
            order = order[:num_batches * size]
        pool_of = np.arange(len(order)) // (size * self.pool_batches)
        order = order[np.lexsort((self.lengths[order], pool_of))]
        starts = np.arange(0, num_batches * size, size)
        starts = starts[rng.permutation(len(starts))]
        starts = starts[:len(self) * self.num_replicas][self.rank::self.num_replicas]
        return [order[s:s + size] for s in starts]

    def __iter__(self):
        batches = self.epoch_batches()
        start, self._resume_at = self._resume_at, 0
        self._handed_out = start
        for batch in batches[start:]:
            self._handed_out += 1
            yield batch.tolist()

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, unless it is the epoch a loaded state resumes. Moving
        to another epoch while a loaded state still has batches of its own to resume is refused:
        an off-by-one epoch counter in the loop would silently skip them."""
        if not _is_count(epoch):
            raise LoaderError(f"an epoch is an int >= 0, not {epoch!r}")
        if epoch != self.epoch:
            if 0 < self._resume_at < len(self):
                raise LoaderError(f"a loaded state resumes epoch {self.epoch} at batch "
                                  f"{self._resume_at} of {len(self)}: set_epoch({epoch}) would "
                                  f"skip the rest of it (call set_epoch({self.epoch}) first, or "
                                  f"load the state after set_epoch)")
            self.epoch, self._resume_at, self._handed_out = int(epoch), 0, 0

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Where this epoch stands. A DataLoader with workers draws batches ahead of the training
        loop, so pass the number of batches the loop has consumed this epoch as `batches_done`."""
        done = self._handed_out if batches_done is None else batches_done
        return {"epoch": self.epoch, "batches_done": int(done), **self._order_args()}

    def _order_args(self) -> dict:
        """What decides the order: a state saved under other values resumes another order (the
        lengths too: another dataset of as many samples buckets them otherwise)."""
        return {"seed": self.seed, "batch_size": self.batch_size,
                "pool_batches": self.pool_batches, "drop_last": self.drop_last,
                "num_samples": len(self.lengths), "lengths_crc32": self._lengths_crc32,
                "num_replicas": self.num_replicas, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise LoaderError(f"a sampler state is the dict state_dict() returns, not "
                              f"{type(state).__name__}")
        mine = self._order_args()
        for key in mine:
            if state.get(key) != mine[key]:
                raise LoaderError(f"sampler state has {key}={state.get(key)!r}, this sampler "
                                  f"{mine[key]!r}: it resumes a different order")
        epoch, done = state.get("epoch"), state.get("batches_done")
        if not _is_count(epoch):
            raise LoaderError(f"sampler state has epoch={epoch!r}, not a count")
        if not _is_count(done) or done > len(self):
            raise LoaderError(f"sampler state has batches_done={done!r} of {len(self)} batches")
        self.epoch = int(epoch)
        self._resume_at = self._handed_out = int(done)


# --------------------------------------------------------------------------- resumable loader

class ResumableLoader:
    """A DataLoader over a LengthBucketSampler that can stop mid-epoch and resume with exactly the
    samples it had not yet handed to the training loop, with any number of workers before and
    after: the order is the sampler's, made in the main process, and the state counts the batches
    the loop received, not those the workers had already read ahead. Other DataLoader arguments
    (num_workers, collate_fn, ...) pass through. Caption and augmentation draws come from
    per-worker streams, so they are reproducible for one worker count, not across counts.
    """

    def __init__(self, dataset, batch_sampler: LengthBucketSampler, **loader_args):
        from torch.utils.data import DataLoader

        if not isinstance(batch_sampler, LengthBucketSampler):
            raise LoaderError("ResumableLoader needs a LengthBucketSampler (its state_dict holds "
                              "the epoch's order)")
        self.batch_sampler = batch_sampler
        self.loader = DataLoader(dataset, batch_sampler=batch_sampler, **loader_args)
        self._received = 0   # batches of the sampler's epoch the loop has received
        self._start = 0      # where the next iteration starts (a loaded state)

    def __len__(self) -> int:
        return len(self.batch_sampler) - self._start

    def __iter__(self):
        self._received, self._start = self._start, 0
        for batch in self.loader:
            self._received += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        moved = epoch != self.batch_sampler.epoch
        self.batch_sampler.set_epoch(epoch)   # first: it refuses to drop a loaded state
        if moved:
            self._start = self._received = 0

    def state_dict(self) -> dict:
        return {"sampler": self.batch_sampler.state_dict(batches_done=self._received)}

    def load_state_dict(self, state: dict) -> None:
        try:
            sampler_state = state["sampler"]
        except (KeyError, TypeError):
            raise LoaderError("not a ResumableLoader state (no 'sampler' entry)") from None
        self.batch_sampler.load_state_dict(sampler_state)
        self._start = self._received = int(sampler_state["batches_done"])
