"""Reading one commit: random access in microseconds, and the queries behind `select`.

Only the code offsets are loaded at open (8 bytes a sample); everything else -- name and caption
offsets, the decoded name list, the name index, counts -- is loaded the first time it is asked
for, so that opening a 2M-sample store costs milliseconds and little memory.
"""
from __future__ import annotations

import fnmatch
import re
from bisect import bisect_left
from hashlib import blake2b

import numpy as np

from . import oscalls
from .errors import NameNotFoundError, StoreCorruptError, StoreFallbackWarning
from .format import Record, crc32

TEXT_WINDOW = 16 << 20  # bytes of captions searched at a time by select(text_contains=)


class StoreReader:
    def __init__(self, container, record: Record, dtypes: dict):
        self.record, self.n = record, record.samples
        self._container, self._dtypes = container, dtypes
        self._arrays: dict = {}
        self._loaded: dict = {}
        for name in record.arrays:  # metadata only: each must hold its committed length
            self.array(name)
        self.offsets = self.whole_array("offsets")
        if self.offsets[0] != 0 or self.offsets[-1] != record.array_lengths["codes"]:
            raise StoreCorruptError(f"{container.path}: offsets do not span the "
                                    f"{record.array_lengths['codes']} committed codes")
        self._codes = self.array("codes")

    def array(self, name: str):
        if name not in self._arrays:
            length = (2 * self.record.counts_length if name == "counts"
                      else self.record.array_lengths[name])
            self._arrays[name] = self._container.array(name, self._dtypes[name], length)
        return self._arrays[name]

    def has_array(self, name: str) -> bool:
        """Whether this commit has the array (optional ones are missing from older stores)."""
        return name == "counts" or name in self.record.array_lengths

    def whole_array(self, name: str) -> np.ndarray:
        """A whole committed array, read-only (offsets, hashes): for a local zarr store, its chunk
        files mapped side by side, which processes share; an HDF5 dataset in one chunk or
        contiguous, a view of the file's map; else a copy in memory."""
        if name not in self._loaded:
            self._loaded[name] = self.array(name).read_all()
        return self._loaded[name]

    # ---- one sample ----------------------------------------------------------------------
    def codes(self, i: int) -> np.ndarray:
        offsets = self.offsets
        start, stop = offsets.item(i), offsets.item(i + 1)
        if not 0 <= start <= stop <= self._codes.length:
            raise self._damaged("offsets", i, start, stop, self._codes.length)
        return self._codes.read(start, stop)

    def _damaged(self, offsets: str, i: int, start: int, stop: int, length: int):
        return StoreCorruptError(f"{self._container.path}: damaged {offsets}: sample {i} spans "
                                 f"{start}..{stop}, outside the {length} committed values")

    def name(self, i: int) -> str:
        bounds = self.whole_array("name_offsets")
        start, stop = bounds.item(i), bounds.item(i + 1)
        names = self.array("names")
        if not 0 <= start <= stop <= names.length:
            raise self._damaged("name_offsets", i, start, stop, names.length)
        raw = names.read(start, stop)
        try:
            return raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StoreCorruptError(f"{self._container.path}: names: sample {i} is not valid "
                                    f"UTF-8: {exc}") from None

    def texts(self, i: int) -> list[str]:
        first, last = self.whole_array("sample_lines")[i:i + 2].tolist()
        if first == last:
            return []
        bounds = self.whole_array("line_offsets")[first:last + 1].tolist()
        text = self.array("text")
        if not (0 <= first < last < self.record.array_lengths["line_offsets"]
                and 0 <= bounds[0] and bounds == sorted(bounds) and bounds[-1] <= text.length):
            raise self._damaged("sample_lines/line_offsets", i, first, last, text.length)
        raw = text.read(bounds[0], bounds[-1]).tobytes()
        base = bounds[0]
        try:
            return [raw[a - base:b - base].decode("utf-8") for a, b in zip(bounds, bounds[1:])]
        except UnicodeDecodeError as exc:
            raise StoreCorruptError(f"{self._container.path}: text: captions of sample {i} are "
                                    f"not valid UTF-8: "
                                    f"{exc}") from None

    # ---- whole-store views ---------------------------------------------------------------
    @property
    def lengths(self) -> np.ndarray:
        if "lengths" not in self._loaded:
            lengths = np.diff(self.offsets)
            if lengths.size and lengths.min() < 0:
                i = int(np.argmax(lengths < 0))
                raise self._damaged("offsets", i, self.offsets.item(i), self.offsets.item(i + 1),
                                    self._codes.length)
            lengths.flags.writeable = False
            self._loaded["lengths"] = lengths
        return self._loaded["lengths"]

    @property
    def names(self) -> list[str]:
        if "name_list" not in self._loaded:
            raw = self.array("names").read_all().tobytes()
            bounds = self.whole_array("name_offsets").tolist()
            try:
                if raw.isascii():  # the usual case: decode once, slice the str
                    whole = raw.decode("ascii")
                    names = [whole[a:b] for a, b in zip(bounds, bounds[1:])]
                else:
                    names = [raw[a:b].decode("utf-8") for a, b in zip(bounds, bounds[1:])]
            except UnicodeDecodeError as exc:
                raise StoreCorruptError(f"{self._container.path}: names: not valid UTF-8: "
                                        f"{exc}") from None
            self._loaded["name_list"] = names
        return self._loaded["name_list"]

    def name_hashes(self) -> np.ndarray:
        return self.whole_array("name_hashes")

    def _name_index(self):
        """Hashes sorted, the sample of each, and where each value of a hash's top bits starts
        among them, as memoryviews: a lookup is one bisect within its top-bits bucket (a few
        compares of Python ints in C), several times cheaper than np.searchsorted on a scalar.
        Built on the first lookup (an argsort: ~0.1 s per million names), never at open."""
        if "name_index" not in self._loaded:
            hashes = self.name_hashes()
            order = np.argsort(hashes, kind="stable")
            sorted_hashes = hashes[order]
            bits = max(1, min(24, int(self.n).bit_length() - 3))   # ~8 hashes a bucket
            tops = np.arange(2 ** bits, dtype=np.uint64) << np.uint64(64 - bits)
            starts = np.append(np.searchsorted(sorted_hashes, tops), self.n)
            order = order.astype(np.int32 if self.n < 2**31 else np.int64)
            offsets = self.whole_array("name_offsets")
            hashes_view, order_view, offsets_view = (
                memoryview(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
                           .view(np.uint8)).cast(a.dtype.char)
                for a in (sorted_hashes, order, offsets))
            # bucket starts as a list (~1 entry per 8 names): its items are ints already
            self._loaded["name_index"] = (hashes_view, order_view, starts.tolist(), offsets_view,
                                          64 - bits, self.array("names"))
        return self._loaded["name_index"]

    def index_of(self, name: str) -> int:
        """The sample named `name`: one binary search of its blake2b-64 hash (within the bucket
        of its top bits), then its bytes compared, since hashes may collide."""
        sorted_hashes, order, starts, bounds, shift, names = self._name_index()
        if isinstance(name, str):
            try:
                encoded = name.encode("utf-8")
            except UnicodeEncodeError:
                encoded = None
            if encoded is not None:
                target = int.from_bytes(blake2b(encoded, digest_size=8).digest(), "little")
                bucket = target >> shift
                position, end = starts[bucket], starts[bucket + 1]
                position = bisect_left(sorted_hashes, target, position, end)
                while position < end and sorted_hashes[position] == target:
                    i = order[position]
                    if names.read(bounds[i], bounds[i + 1]).tobytes() == encoded:
                        return i
                    position += 1
        raise NameNotFoundError(f"no sample named {name!r} in {self._container.path}")

    @property
    def counts(self) -> np.ndarray:
        if "counts" not in self._loaded:
            counts = self.stored_counts().copy()  # a copy: a later commit may rewrite the slot
            if crc32(counts) != self.record.checksums["counts"]:  # damaged (check() says so)
                oscalls.warn_fallback(f"counts:{self._container.path}",
                                      f"tokstore: {self._container.path}: the stored code counts "
                                      f"fail their checksum: counted again from the codes (run "
                                      f"check() / tokstore verify)", StoreFallbackWarning)
                counts = self.compute_counts()
            counts.flags.writeable = False
            self._loaded["counts"] = counts
        return self._loaded["counts"]

    def stored_counts(self) -> np.ndarray:
        """The counts slot the commit record names, as stored (read-only)."""
        return self.array("counts").read(*self.record.counts_span(self.record.counts_slot))

    def compute_counts(self) -> np.ndarray:
        """Counts from the committed codes: codes, one end token per sample, pad 0."""
        size = self.record.codebook_size
        counts = np.zeros(size + 2, np.int64)
        for _, block in self._codes.blocks():
            if block.size and (block.min() < 0 or block.max() >= size):
                raise StoreCorruptError(f"{self._container.path}: codes: values outside the "
                                        f"codebook [0, {size})")
            counts[:size] += np.bincount(block, minlength=size)
        counts[size] = self.n
        return counts

    # ---- queries -------------------------------------------------------------------------
    def select(self, min_len=None, max_len=None, name_glob=None, text_contains=None) -> np.ndarray:
        keep = np.ones(self.n, dtype=bool)
        if min_len is not None:
            keep &= self.lengths >= min_len
        if max_len is not None:
            keep &= self.lengths <= max_len
        if text_contains is not None:
            keep &= self._samples_with_text(text_contains)
        if name_glob is not None:
            match = re.compile(fnmatch.translate(name_glob)).match
            names = self.names
            candidates = np.flatnonzero(keep)
            keep[candidates] = [match(names[i]) is not None for i in candidates]
        return np.flatnonzero(keep).astype(np.int64)

    def _samples_with_text(self, needle: str) -> np.ndarray:
        """Which samples have a caption line containing `needle` (ASCII case-insensitive)."""
        hits = np.zeros(self.n, dtype=bool)
        wanted = needle.encode("utf-8")
        line_offsets = self.whole_array("line_offsets")
        sample_lines = self.whole_array("sample_lines")
        if not wanted:
            hits[:] = True
            return hits
        starts_at = re.compile(b"(?=" + re.escape(wanted) + b")", re.IGNORECASE)  # overlapping
        text, lines = self.array("text"), len(line_offsets) - 1
        first = 0
        while first < lines:  # windows of whole lines, so that no match is cut in two
            last = int(np.searchsorted(line_offsets, line_offsets[first] + TEXT_WINDOW, "right")) - 1
            last = min(max(last, first + 1), lines)
            base = int(line_offsets[first])
            window = text.read(base, int(line_offsets[last])).tobytes()
            starts = np.fromiter((m.start() for m in starts_at.finditer(window)), np.int64) + base
            if starts.size:
                line = np.searchsorted(line_offsets, starts, side="right") - 1
                inside = starts + len(wanted) <= line_offsets[line + 1]
                samples = np.searchsorted(sample_lines, line[inside], side="right") - 1
                hits[samples] = True
            first = last
        return hits
