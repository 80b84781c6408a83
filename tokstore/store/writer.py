"""Appending samples: validate a whole batch first, buffer it, write it past the commit point,
then commit by writing the counts (into the slot the last commit did not use) and one atomic
commit record.

A failed `append` changes nothing. Buffered samples go to the container in large pieces (a small
append would otherwise rewrite the last chunk of every array), at the latest at `commit`.

Duplicate names are found through every sample's blake2b-64 name hash (8 bytes a sample) kept
sorted in two arrays: each batch's sorted hashes are merged into the small recent one, which is
merged into the large one once it passes an eighth of it (so that an append of a few hundred
names does not copy millions). A hash already there is confirmed by comparing the names
themselves (hashes may collide); the sample holding it is looked up only then. At 2M names this
holds half the memory of the sorted runs of (hash, sample) merged LSM-style it replaced, at the
same append rate or better (benchmarks/duplicate_check.py, RESULTS.md).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import CodeRangeError, DuplicateNameError, SampleError
from . import skipped as skipped_list
from .captions import has_caption
from .format import Record, crc32, name_hashes

FLUSH_BYTES = 64 << 20  # write buffered samples once they hold this much
RECENT_HASHES = 1 << 16  # the recent name hashes are merged into the rest past this (or 1/8)


class StoreWriter:
    def __init__(self, container, record: Record, dtypes: dict, counts: np.ndarray, reader_factory):
        self.container, self.record, self.dtypes = container, record, dtypes
        self.counts = counts.copy()
        self.meta = dict(record.meta)
        self._reader_factory = reader_factory  # committed names, for duplicate confirmation
        self._written = dict(record.array_lengths)   # what the container holds (>= committed)
        self._arrays = record.arrays          # a store made before an optional array stays so
        self._crc = {name: record.checksums[name] for name in self._arrays}
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._arrays}
        self._pending_bytes = 0
        self._pending_names: list[str] = []
        committed = record.array_lengths
        self._ends = {"codes": committed["codes"], "names": committed["names"],
                      "text": committed["text"], "lines": committed["line_offsets"] - 1}
        self._hashes: list | None = None  # [large, recent]: every name hash, sorted; on first use
        self.skipped: list | None = None  # a new skipped list for the next commit
        self.skipped_bytes = b""  # and its encoding (skipped.encode)
        self.dirty = False

    @property
    def samples(self) -> int:
        """Committed plus buffered samples."""
        return self.record.samples + len(self._pending_names)

    # ---- append --------------------------------------------------------------------------
    def append(self, names, codes_list, texts_list):
        names, codes_list, texts_list = list(names), list(codes_list), list(texts_list)
        if not len(names) == len(codes_list) == len(texts_list):
            raise SampleError(f"append needs one codes array and one list of caption lines per "
                              f"name: got {len(names)} names, {len(codes_list)} codes, "
                              f"{len(texts_list)} texts")
        if not names:
            return
        encoded = self._encode_names(names)
        hashes = name_hashes(encoded)
        self._check_new_names(names, hashes)
        codes, code_lengths = self._check_codes(names, codes_list)
        lines, line_counts = self._encode_texts(names, texts_list)

        # Everything is valid: buffer it.
        n = len(names)
        ends = self._ends
        line_lengths = np.fromiter((len(line) for line in lines), np.int64, len(lines))
        staged = {
            "codes": codes,
            "offsets": ends["codes"] + np.cumsum(code_lengths),
            "names": np.frombuffer(b"".join(encoded), np.uint8),
            "name_offsets": ends["names"] + np.cumsum([len(e) for e in encoded], dtype=np.int64),
            "name_hashes": hashes,
            "text": np.frombuffer(b"".join(lines), np.uint8),
            "line_offsets": ends["text"] + np.cumsum(line_lengths),
            "sample_lines": ends["lines"] + np.cumsum(line_counts),
        }
        if "captioned" in self._pending:
            staged["captioned"] = np.fromiter(map(has_caption, texts_list), np.uint8, n)
        for name, values in staged.items():
            values = values.astype(self.dtypes[name], copy=False)
            self._pending[name].append(values)
            self._pending_bytes += values.nbytes
        ends["codes"] += len(codes)
        ends["names"] += len(staged["names"])
        ends["text"] += len(staged["text"])
        ends["lines"] += len(lines)
        size = self.record.codebook_size
        self.counts[:size] += np.bincount(codes, minlength=size)
        self.counts[self.record.end_token] += n
        self._add_to_hash_index(hashes)
        self._pending_names.extend(names)
        self.dirty = True
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def _encode_names(self, names) -> list[bytes]:
        encoded = []
        for name in names:
            if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
                raise SampleError(f"a sample name must be a non-empty one-line str, not {name!r}")
            try:
                encoded.append(name.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise SampleError(f"sample name {name!r} is not valid Unicode: {exc}") from None
        if len(set(names)) != len(names):
            seen = set()
            duplicate = next(name for name in names if name in seen or seen.add(name))
            raise DuplicateNameError(f"sample name {duplicate!r} occurs twice in one append")
        return encoded

    def _check_new_names(self, names, hashes):
        for known in self._sorted_hashes():
            if not len(known):
                continue
            found = known[np.minimum(np.searchsorted(known, hashes), len(known) - 1)] == hashes
            for j in np.flatnonzero(found):  # equal hash: almost surely the same name
                owner = self._owner(names[j], hashes[j])
                if owner is not None:
                    raise DuplicateNameError(f"sample name {names[j]!r} is already in the "
                                             f"store (sample {owner})")

    def _owner(self, name: str, hash_value) -> int | None:
        """The sample already named `name`, or None (another name with the same hash)."""
        reader = self._reader_factory()
        for index in np.flatnonzero(reader.name_hashes() == hash_value).tolist():
            if reader.name(index) == name:
                return index
        if name in self._pending_names:  # appended since the last commit
            return self.record.samples + self._pending_names.index(name)
        return None

    def _sorted_hashes(self) -> list:
        if self._hashes is None:
            self._hashes = [np.sort(self._reader_factory().name_hashes()), np.zeros(0, "<u8")]
        return self._hashes

    def _add_to_hash_index(self, hashes):
        large, recent = self._sorted_hashes()
        recent = _merged(recent, np.sort(hashes))
        if len(recent) > max(RECENT_HASHES, len(large) // 8):
            large, recent = _merged(large, recent), recent[:0]
        self._hashes = [large, recent]

    def _check_codes(self, names, codes_list):
        arrays, lengths = [], np.empty(len(names), np.int64)
        for i, (name, codes) in enumerate(zip(names, codes_list)):
            array = np.asarray(codes)
            if array.ndim == 2 and array.shape[0] == 1:  # the legacy (1, T') layout
                array = array[0]
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise SampleError(f"sample {name!r}: codes must be a 1-D integer array (or shape "
                                  f"(1, T')), not {array.dtype} of shape {array.shape}")
            arrays.append(array)
            lengths[i] = len(array)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        size = self.record.codebook_size
        if flat.size and (flat.min() < 0 or flat.max() >= size):
            for name, array in zip(names, arrays):
                bad = array[(array < 0) | (array >= size)]
                if bad.size:
                    raise CodeRangeError(f"sample {name!r}: code {int(bad[0])} is outside the "
                                         f"codebook [0, {size})")
        return flat.astype(self.dtypes["codes"]), lengths

    @staticmethod
    def _encode_texts(names, texts_list):
        lines, counts = [], np.empty(len(names), np.int64)
        for i, (name, texts) in enumerate(zip(names, texts_list)):
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise SampleError(f"sample {name!r}: texts must be a list of str lines "
                                  f"(as readlines() returns them), not {texts!r:.80}")
            try:
                lines.extend(t.encode("utf-8") for t in texts)
            except UnicodeEncodeError as exc:
                raise SampleError(f"sample {name!r}: caption is not valid Unicode: {exc}") from None
            counts[i] = len(texts)
        return lines, counts

    # ---- write and commit ----------------------------------------------------------------
    def flush(self):
        """Write buffered samples past the commit point (still invisible to readers)."""
        for name in self._arrays:
            if self._pending[name]:
                values = np.concatenate(self._pending[name])
                self.container.write(name, self._written[name], values)
                self._crc[name] = crc32(values, self._crc[name])
                self._written[name] += len(values)
                self._pending[name] = []
        self._pending_bytes = 0

    def commit(self) -> Record:
        self.flush()
        slot = 1 - self.record.counts_slot  # the committed slot stays intact until the record
        self.container.write("counts", self.record.counts_span(slot)[0], self.counts)
        checksums = dict(self._crc, counts=crc32(self.counts))
        region = self._write_skipped()
        record = replace(self.record, samples=self.samples, array_lengths=dict(self._written),
                         checksums=checksums, meta=dict(self.meta), counts_slot=slot,
                         skipped=region)
        self.container.write_record(record)  # the commit point
        self.record, self._pending_names, self.dirty = record, [], False
        self.skipped, self.skipped_bytes = None, b""
        return record

    def _write_skipped(self) -> dict | None:
        """Write a new skipped list past the committed one; the region the record will name."""
        region = self.record.skipped
        if self.skipped is None or region is None:
            return region
        new = self.skipped_bytes
        committed = skipped_list.read(self.container, region)
        if new == committed:
            return region
        start, data, region = skipped_list.plan_write(committed, region, new, len(self.skipped))
        if data:
            self.container.write(skipped_list.ARRAY, start, skipped_list.as_array(data))
        return region


def _merged(sorted_values: np.ndarray, more_sorted: np.ndarray) -> np.ndarray:
    """Two sorted arrays as one sorted array."""
    return np.insert(sorted_values, np.searchsorted(sorted_values, more_sorted), more_sorted)
