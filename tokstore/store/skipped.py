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
    """The list as UTF-8 JSON lines, or a StoreError if it is not a list of JSON-safe dicts.
    JSON escapes "\n" inside strings, so each entry is one line; other characters that some
    readers break lines at (U+2028, NEL, ...) stay as they are: lines end at "\n" only."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise StoreError("meta 'skipped' must be a list of dicts")
    line = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    try:
        return "".join(f"{line(e)}\n" for e in entries).encode()
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise StoreError(f"meta 'skipped' must be JSON-safe: {exc}") from None


def decode(data: bytes, region: dict, where: str) -> list[dict]:
    """The list a record's region names; StoreCorruptError naming `where` if it is damaged."""
    if len(data) != region["length"] or zlib.crc32(data) != region["crc32"]:
        raise StoreCorruptError(f"{where}: damaged skipped list: its bytes do not match the "
                                f"commit record's checksum")
    lines = data.split(b"\n")
    if lines[-1]:  # the list's last line ends with "\n" too
        raise StoreCorruptError(f"{where}: damaged skipped list: its last line is unfinished")
    try:  # one JSON array: each line one value (a line of two would make the count differ)
        entries = json.loads("[" + b",".join(lines[:-1]).decode("utf-8") + "]")
    except ValueError:  # UnicodeDecodeError too
        raise StoreCorruptError(f"{where}: damaged skipped list: {_first_bad(lines)}") from None
    if len(entries) != region["count"] or not all(isinstance(e, dict) for e in entries):
        raise StoreCorruptError(f"{where}: damaged skipped list: {len(entries)} entries, the "
                                f"commit record says {region['count']}")
    return entries


def _first_bad(lines: list[bytes]) -> str:
    """Which line of a list that does not parse is bad, and why (parsed one by one: the slow
    way, only for a damaged list)."""
    for number, line in enumerate(lines[:-1], 1):
        try:
            json.loads(line.decode("utf-8"))
        except ValueError as exc:
            return f"line {number}: {exc}"
    return "its lines do not join into one list"  # e.g. a line that ends in a comma


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
