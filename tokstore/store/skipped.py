"""The skipped list (split entries a build left out, {name, path, reason}) kept in the store's
`skipped` byte array instead of the commit record: it is unbounded, and an HDF5 record slot holds
512 KiB. The array holds UTF-8 JSON lines, one entry each; the record keeps only where the
current list lies in it, how many entries it has and its crc32 (`Record.skipped`). A new list
is appended past the end (the old one stays until no record names it), or, when it only extends
the current list, just its new entries: like every append-only array, a crash before the record
leaves the last commit intact. Records without `skipped` (stores made before) keep the list in
meta["skipped"] and read as they are.
"""
from __future__ import annotations

import copy
import json
import zlib

import numpy as np

from .errors import StoreCorruptError, StoreError

ARRAY = "skipped"
EMPTY = {"start": 0, "length": 0, "count": 0, "crc32": 0}


def encode(entries) -> bytes:
    """The list as UTF-8 JSON lines, or a StoreError if it is not a list of JSON-safe dicts."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise StoreError("meta 'skipped' must be a list of dicts")
    try:
        return b"".join(json.dumps(e, ensure_ascii=False, allow_nan=False,
                                   separators=(",", ":")).encode() + b"\n" for e in entries)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise StoreError(f"meta 'skipped' must be JSON-safe: {exc}") from None


def decode(data: bytes, region: dict, where: str) -> list[dict]:
    """The list a record's region names; StoreCorruptError naming `where` if it is damaged."""
    if len(data) != region["length"] or zlib.crc32(data) != region["crc32"]:
        raise StoreCorruptError(f"{where}: damaged skipped list: its bytes do not match the "
                                f"commit record's checksum")
    try:
        entries = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreCorruptError(f"{where}: damaged skipped list: {exc}") from None
    if len(entries) != region["count"] or not all(isinstance(e, dict) for e in entries):
        raise StoreCorruptError(f"{where}: damaged skipped list: {len(entries)} entries, the "
                                f"commit record says {region['count']}")
    return entries


_SCALARS = (str, int, float, bool, type(None))


def copied(entries: list) -> list:
    """A copy of the list that a caller may change: entry by entry where every value is a JSON
    scalar (all that a build writes: ~4x faster than copy.deepcopy over 10^4 entries, and the
    build and `info` read the list several times), deep for anything else."""
    return [dict(e) if isinstance(e, dict) and all(type(v) in _SCALARS for v in e.values())
            else copy.deepcopy(e) for e in entries]


def parse_region(raw) -> dict | None:
    """A record's `skipped` field validated (None: an older record, the list is in meta)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != set(EMPTY) or not all(
            isinstance(raw[k], int) and not isinstance(raw[k], bool) and raw[k] >= 0 for k in EMPTY):
        raise ValueError(f"skipped is {raw!r:.80}")
    return dict(raw)


def end(region: dict) -> int:
    """The committed length of the array: the current list is always its last bytes."""
    return region["start"] + region["length"]


def plan_write(committed: bytes, region: dict, new: bytes, count: int) -> tuple[int, bytes, dict]:
    """(where to write, what, the new region) for replacing the committed list with `new`."""
    if new.startswith(committed):  # only new entries: append them to the current list
        tail = new[len(committed):]
        return end(region), tail, {"start": region["start"], "length": len(new), "count": count,
                                   "crc32": zlib.crc32(tail, region["crc32"])}
    return end(region), new, {"start": end(region), "length": len(new), "count": count,
                              "crc32": zlib.crc32(new)}


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def read(container, region: dict) -> bytes:
    """The committed list's bytes, as stored."""
    if not region["length"]:
        return b""
    array = container.array(ARRAY, np.dtype("|u1"), end(region))
    return bytes(array.read(region["start"], end(region)))
