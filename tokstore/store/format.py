"""The tokstore format: array names, dtypes, the commit record, and how it is validated.

One logical format, two containers (a Zarr v3 group, or one HDF5 file). Every array is 1-D,
uncompressed, little-endian and chunked; no variable-length types (they are not portable).
Ragged data is stored Megatron-style as a flat array plus int64 offsets (n + 1 entries, first 0):

    codes         uint16 if codebook_size <= 65536 else int32 (or as asked at create); all
                  samples' codes, end to end
    offsets       int64 (n + 1)       sample i's codes are codes[offsets[i]:offsets[i+1]]
    names         uint8               UTF-8 names, end to end
    name_offsets  int64 (n + 1)       sample i's name is names[name_offsets[i]:name_offsets[i+1]]
    name_hashes   uint64 (n)          blake2b-64 of each UTF-8 name: duplicate checks and
                                      name lookup without a dict of every name
    text          uint8               UTF-8 caption lines, end to end, verbatim ('\\n' kept)
    line_offsets  int64 (lines + 1)   line j is text[line_offsets[j]:line_offsets[j+1]]
    sample_lines  int64 (n + 1)       sample i's lines are lines sample_lines[i]..sample_lines[i+1]-1
    captioned     uint8 (n)           1 if sample i has a caption line that keeps something after
                                      str.strip(), else 0: computed from the lines at append time
                                      (captions.py). Stores made before it lack the array (their
                                      records name no length for it) and answer from the text.
    counts        int64 (2 * (codebook_size + 2))  two slots of codebook_size + 2 entries (one
                                      chunk each): codes 0..K-1, then the end token (once per
                                      sample), then the pad token (always 0)
    skipped       uint8               the build's skipped list as JSON lines (ASCII; UTF-8 where
                                      written before 2026-12-08); the record's `skipped` names
                                      where the current list lies, its count and crc32 (older
                                      lists before or after it are dead room, see skipped.py).
                                      Records before it keep the list in meta.

The commit record is one JSON object: it names the committed length and the running crc32 of
every append-only array, the sample count, the static facts (format version, codebook size,
end/pad tokens, code dtype, tokstore version), the provenance `meta` (legacy_code_dtype,
model_config, checkpoint_sha256, ...) and its own crc32 (`record_crc32`, over the rest as
canonical JSON: an edited mean or checksum is damage; records written before it have none and
read as they are). Writing it is the commit, and a commit is durable: every file written since
the last commit is fsynced first, then the record is written.
 - Zarr: the record is the `tokstore` attribute of the root group. The chunk and metadata files
   written since the last commit and their directories are fsynced, then the root zarr.json is
   replaced through a temporary file, fsync, rename and a directory fsync. Every chunk and
   metadata file is written through a temporary file and a rename (zarr_plain.py for a local
   store in tokstore's layout; zarr's LocalStore does the same since zarr 3.1.3), so a chunk
   file is never half-written; object stores replace objects whole.
 - HDF5: the record lives in the file's userblock (bytes HDF5 never touches), in two slots
   written alternately, each with a sequence number and a crc32. A commit flushes HDF5, writes
   the payload into the older slot, fsyncs, then writes that slot's header (the commit point)
   and fsyncs: a torn record keeps the older header, and reads as the older slot's damage. The
   newest intact slot wins; a damaged slot that is, or may be, newer is an error, never a quiet
   rollback to the older commit (`TokenStore.open(path, rollback=True)` asks for that).
Data beyond a committed length is invisible. Arrays only grow, and a rewritten partial chunk
keeps its committed prefix byte for byte, so a crash at any moment leaves the last commit intact.
Reopening a Zarr store for append cuts every array back to its committed length (zeroing the
dropped tail of the last chunk) and carries on; an HDF5 store is reopened straight into SWMR mode,
which cannot shrink datasets, so the next appends overwrite what lies past the commit. A resumed
store holds the same content as an uninterrupted one (every array's committed bytes, the counts,
the record); its files are byte-identical only when both made the same commits (Zarr).

`counts` is derived data, rewritten whole at every commit, so it is not append-only: it has two
slots, and a commit writes the slot its record does not name, then the record naming that slot
(`counts_slot`) and its crc32. A crash between the two writes leaves the old record naming the
intact old slot, so the committed counts always match the committed codes; the slot alternates
with every commit (slot 0 after `create`). A slot that fails its crc32 is damage: `check()`
reports it, readers recompute from the codes.

A local store is created beside its path (`.NAME.creating-*`) and renamed into place after its
first commit, so a crash while creating leaves no half store (the next create removes the rest).
"Crash" means the writing process dies (SIGKILL, the OOM killer, a node preempted) or the machine
does (commits are fsynced). A write the OS refuses (ENOSPC, EROFS, EIO) raises StoreWriteError
naming the file; the store stays at its last commit. One writer at a time: it holds an flock on
the store's directory (zarr; `tokstore.lock` where a file system refuses that) or file (HDF5),
which forked processes do not keep (see oscalls.py); remote URLs have no lock. Chunks default to
512 KiB, so that a commit rewrites little and a read maps little.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import NotAStoreError, StoreCorruptError, StoreError, StoreVersionError

FORMAT_NAME = "tokstore"
FORMAT_VERSION = 1
RECORD_KEY = "tokstore"           # zarr root attribute holding the commit record
RECORD_CHECKSUM = "record_crc32"  # the record's own checksum (see record_checksum)
DEFAULT_CHUNK_BYTES = 1 << 19     # 512 KiB: small enough that a commit rewrites little
MAX_CHUNK_BYTES = 1 << 26         # a new store writes one chunk file of this size per array
MAX_CODEBOOK_SIZE = 1 << 24       # counts hold 8 bytes per code, twice (two slots): 256 MiB

# The append-only arrays, in write order, with their dtypes ("codes" depends on the codebook).
ARRAYS = ("codes", "offsets", "names", "name_offsets", "name_hashes",
          "text", "line_offsets", "sample_lines")
FIXED_DTYPES = {"offsets": "<i8", "names": "|u1", "name_offsets": "<i8", "name_hashes": "<u8",
                "text": "|u1", "line_offsets": "<i8", "sample_lines": "<i8", "captioned": "|u1"}
# Append-only arrays (one entry per sample) a store may lack, having been made before them; a
# record that names a length for one has it, and it is then committed and checked like the rest.
OPTIONAL_ARRAYS = ("captioned",)
OFFSET_ARRAYS = ("offsets", "name_offsets", "line_offsets", "sample_lines")  # start as [0]
CODE_DTYPES = ("uint16", "int32", "int64")


def default_code_dtype(codebook_size: int) -> str:
    return "uint16" if codebook_size <= 65536 else "int32"


def check_code_dtype(code_dtype, codebook_size: int) -> str:
    """The dtype name ("uint16" | "int32" | "int64") for a dtype given in any numpy spelling."""
    try:
        code_dtype = np.dtype(code_dtype).name
    except TypeError:  # not a dtype at all: the check below names it
        code_dtype = str(code_dtype)
    if code_dtype not in CODE_DTYPES:
        raise StoreError(f"code dtype must be one of {', '.join(CODE_DTYPES)}, not {code_dtype!r}")
    if np.iinfo(code_dtype).max < codebook_size - 1:
        raise StoreError(f"code dtype {code_dtype} cannot hold codes up to {codebook_size - 1}")
    return code_dtype


def array_dtypes(code_dtype: str) -> dict[str, np.dtype]:
    """The dtype of every array, counts included, all little-endian."""
    dtypes = {name: np.dtype(FIXED_DTYPES.get(name, code_dtype)).newbyteorder("<")
              for name in (*ARRAYS, *OPTIONAL_ARRAYS)}
    dtypes["counts"] = np.dtype("<i8")
    dtypes["skipped"] = np.dtype("|u1")  # the skipped list, JSON lines (see skipped.py)
    return dtypes


def chunk_length(dtype: np.dtype, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // dtype.itemsize)


def name_hashes(encoded_names: list[bytes]) -> np.ndarray:
    """blake2b-64 of each UTF-8 name as uint64: stable across processes, unlike hash()."""
    digests = b"".join(hashlib.blake2b(n, digest_size=8).digest() for n in encoded_names)
    return np.frombuffer(digests, dtype="<u8")


def crc32(array: np.ndarray, start: int = 0) -> int:
    """Running crc32 over an array's little-endian bytes (continue with start=previous)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"), start)


MAX_META_DEPTH = 128  # containers within meta: what JSON and a deep copy take back (~450)


def json_safe(meta: dict, what: str = "meta") -> dict:
    """A deep copy of meta, or a StoreError naming why it cannot be stored as JSON (or would be
    stored but never read back: nested more than MAX_META_DEPTH deep)."""
    if not isinstance(meta, dict):
        raise StoreError(f"{what} must be a dict, not {type(meta).__name__}")
    deep = StoreError(f"{what} is nested more than {MAX_META_DEPTH} deep")
    if nesting_depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH:
        raise deep
    try:
        return json.loads(json.dumps(meta, allow_nan=False))
    except RecursionError:  # a custom container deeper than it looks
        raise deep from None
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be JSON-safe (str, int, float, bool, None, list, dict): "
                         f"{exc}") from None


def nesting_depth(value, limit: int) -> int:
    """How many containers (dicts, lists, tuples) deep `value` is (0 for a scalar), counted
    level by level without recursion, up to limit + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (dict, list, tuple))]
        if not level:
            break
        depth += 1
        level = [item for v in level for item in (v.values() if isinstance(v, dict) else v)]
    return depth


@dataclass
class Record:
    """One commit: what a reader may see. Serialized as the JSON commit record."""

    codebook_size: int
    code_dtype: str
    samples: int = 0
    array_lengths: dict = field(default_factory=dict)  # committed length of each append-only
                                                        # array (the record's "lengths")
    checksums: dict = field(default_factory=dict)   # crc32 per array, and of the counts slot
    meta: dict = field(default_factory=dict)
    tokstore_version: str = ""
    counts_slot: int = 0                            # which half of `counts` this commit wrote
    skipped: dict | None = None                     # where the skipped list lies (skipped.py)

    @property
    def arrays(self) -> tuple[str, ...]:
        """The append-only arrays this commit has: ARRAYS, and the optional ones it names."""
        return ARRAYS + tuple(name for name in OPTIONAL_ARRAYS if name in self.array_lengths)

    @property
    def end_token(self) -> int:
        return self.codebook_size

    @property
    def pad_token(self) -> int:
        return self.codebook_size + 1

    @property
    def counts_length(self) -> int:
        """Entries in one counts slot: every code, the end token, the pad token."""
        return self.codebook_size + 2

    def counts_span(self, slot: int) -> tuple[int, int]:
        """Where counts slot 0 or 1 lies in the `counts` array."""
        return slot * self.counts_length, (slot + 1) * self.counts_length

    @classmethod
    def empty(cls, codebook_size: int, code_dtype: str, meta: dict, version: str) -> "Record":
        every = (*ARRAYS, *OPTIONAL_ARRAYS)  # a new store has them all
        lengths = {name: (1 if name in OFFSET_ARRAYS else 0) for name in every}
        zero = np.zeros(1, dtype="<i8")
        checksums = {name: (crc32(zero) if name in OFFSET_ARRAYS else 0) for name in every}
        checksums["counts"] = crc32(np.zeros(codebook_size + 2, dtype="<i8"))  # slot 0
        from .skipped import EMPTY
        return cls(codebook_size, code_dtype, 0, lengths, checksums, meta, version, 0, dict(EMPTY))

    def to_dict(self) -> dict:
        record = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                  "tokstore_version": self.tokstore_version,
                  "codebook_size": self.codebook_size, "end_token": self.end_token,
                  "pad_token": self.pad_token, "code_dtype": self.code_dtype,
                  "samples": self.samples, "lengths": dict(self.array_lengths),
                  "checksums": dict(self.checksums), "counts_slot": self.counts_slot,
                  "meta": self.meta}
        if self.skipped is not None:  # records before it keep the list in meta
            record["skipped"] = dict(self.skipped)
        record[RECORD_CHECKSUM] = record_checksum(record)
        return record

    @classmethod
    def from_dict(cls, raw, where: str) -> "Record":
        """Validate a stored record; one clear error naming `where` if it is not usable."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise NotAStoreError(f"{where} is not a tokstore store (no tokstore commit record)")
        version = raw.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise StoreCorruptError(f"{where}: damaged attributes: format_version is {version!r}")
        if version > FORMAT_VERSION:
            raise StoreVersionError(f"{where} has format version {version}; this tokstore reads "
                                    f"up to version {FORMAT_VERSION}: upgrade tokstore")
        if RECORD_CHECKSUM in raw:  # records before tokstore 0.1.1 have none: read as they are
            try:
                intact = raw[RECORD_CHECKSUM] == record_checksum(raw)
            except (TypeError, ValueError):  # not JSON-serializable: cannot be a written record
                intact = False
            if not intact:
                raise StoreCorruptError(f"{where}: damaged commit record: its content does not "
                                        f"match its checksum (edited, or damaged on disk)")
        try:
            return cls._parse(raw)
        except KeyError as exc:
            raise StoreCorruptError(f"{where}: damaged attributes: {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise StoreCorruptError(f"{where}: damaged attributes: {exc}") from None

    @classmethod
    def _parse(cls, raw: dict) -> "Record":
        def integer(value, what, low=0):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{what} is {value!r}")
            return value

        size = integer(raw["codebook_size"], "codebook_size", 1)
        if raw["end_token"] != size or raw["pad_token"] != size + 1:
            raise ValueError(f"end/pad tokens {raw['end_token']!r}/{raw['pad_token']!r} do not "
                             f"follow codebook_size {size}")
        code_dtype = raw["code_dtype"]
        if code_dtype not in CODE_DTYPES or np.iinfo(code_dtype).max < size - 1:
            raise ValueError(f"code_dtype is {code_dtype!r}")
        samples = integer(raw["samples"], "samples")
        present = ARRAYS + tuple(name for name in OPTIONAL_ARRAYS if name in raw["lengths"])
        lengths = {name: integer(raw["lengths"][name], f"length of {name}") for name in present}
        checksums = {name: integer(raw["checksums"][name], f"checksum of {name}")
                     for name in (*present, "counts")}
        counts_slot = integer(raw["counts_slot"], "counts_slot")
        if counts_slot > 1:
            raise ValueError(f"counts_slot is {counts_slot}, not 0 or 1")
        expected = {"offsets": samples + 1, "name_offsets": samples + 1,
                    "sample_lines": samples + 1, "name_hashes": samples,
                    **{name: samples for name in OPTIONAL_ARRAYS}}
        for name, want in expected.items():
            if name in lengths and lengths[name] != want:
                raise ValueError(f"{name} has {lengths[name]} entries for {samples} samples")
        if lengths["line_offsets"] < 1:
            raise ValueError("line_offsets is empty")
        meta = raw["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"meta is {type(meta).__name__}, not a dict")
        from .skipped import parse_region
        return cls(size, code_dtype, samples, lengths, checksums, meta,
                   str(raw.get("tokstore_version", "")), counts_slot,
                   parse_region(raw.get("skipped")))


def record_checksum(record: dict) -> str:
    """crc32 of the record without its checksum, as canonical JSON (sorted keys, no spaces):
    any edit of a value -- meta.mean, checkpoint_sha256, a length -- changes it."""
    body = {key: value for key, value in record.items() if key != RECORD_CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{zlib.crc32(text.encode()):08x}"


def probabilities(counts: np.ndarray) -> np.ndarray:
    """counts / total with the original's arithmetic (`code_counts.float() / total_tokens`): counts
    cast to float32, divided by the total in float32. A float64 division rounds differently once
    counts pass 2**24, so this is what keeps a large store's probability file the original's."""
    total = counts.sum()
    if not total:
        return np.zeros(len(counts), np.float32)
    return counts.astype(np.float32) / np.float32(total)
