"""The skipped list (split entries a build left out, {name, path, reason}) kept in the store's
`skipped` byte array instead of the commit record: it is unbounded, and an HDF5 record slot holds
512 KiB. The array holds JSON lines, one entry each; the record keeps only where the current list
lies in it, how many entries it has and its crc32 (`Record.skipped`). A new list is written where
no record's list lies (see plan_write), or, when it only extends the current list, just its new
entries after it: a crash before the record leaves the last commit intact. Records without
`skipped` (stores made before) keep the list in meta["skipped"] and read as they are.
"""
from __future__ import annotations

import copy
import json
import zlib

import numpy as np

from .errors import StoreCorruptError, StoreError
from .format import nesting_depth

ARRAY = "skipped"
EMPTY = {"start": 0, "length": 0, "count": 0, "crc32": 0}


MAX_DEPTH = 100  # containers within an entry: deeper ones could be written but not copied back


def encode(entries) -> bytes:
    """The list as JSON lines, or a StoreError if it is not a list of JSON-safe dicts. ASCII:
    every other character is escaped, so a line ends only at its "\n" and a path that is not
    UTF-8 (Python's surrogate escapes) comes back as it was."""
    if not _is_entry_list(entries):
        raise StoreError("meta 'skipped' must be a list of dicts")
    if nesting_depth(entries, MAX_DEPTH + 1) > MAX_DEPTH + 1:  # the list, then its entries
        raise StoreError(f"meta 'skipped': an entry is nested more than {MAX_DEPTH} deep")
    line = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    try:
        return "".join(f"{line(e)}\n" for e in entries).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise StoreError(f"meta 'skipped' must be JSON-safe: {exc}") from None


def decode(data: bytes, region: dict, where: str) -> list[dict]:
    """The list a record's region names (lines this module wrote, or the UTF-8 lines of stores
    made before); StoreCorruptError naming `where` if it is damaged."""
    def damaged(why: str):
        return StoreCorruptError(f"{where}: damaged skipped list: {why}")

    if len(data) != region["length"] or zlib.crc32(data) != region["crc32"]:
        raise damaged("its bytes do not match the commit record's checksum")
    lines = data.split(b"\n")
    if lines[-1]:  # the list's last line ends with "\n" too
        raise damaged("its last line is unfinished")
    try:  # one JSON array: each line one value (a line of two would make the count differ)
        entries = _parse("[" + b",".join(lines[:-1]).decode("utf-8") + "]")
    except RecursionError:
        raise damaged("nested too deeply") from None
    except ValueError:  # UnicodeDecodeError too
        raise damaged(_first_bad(lines)) from None
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise damaged(f"line {number} is not an object")
    if nesting_depth(entries, MAX_DEPTH + 1) > MAX_DEPTH + 1:  # all at once; one by one to name it
        number = next(n for n, entry in enumerate(entries, 1)
                      if nesting_depth(entry, MAX_DEPTH) > MAX_DEPTH)
        raise damaged(f"line {number} is nested more than {MAX_DEPTH} deep")
    if len(entries) != region["count"]:
        raise damaged(f"{len(entries)} entries, the commit record says {region['count']}")
    return entries


def check_entries(entries, where: str) -> list[dict]:
    """An older store's list (kept in meta), if it is a list of entries."""
    if not _is_entry_list(entries):
        raise StoreCorruptError(f"{where}: damaged skipped list: meta 'skipped' is "
                                f"{type(entries).__name__}, not a list of entries")
    return entries


def _is_entry_list(entries) -> bool:
    return isinstance(entries, list) and all(isinstance(e, dict) for e in entries)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse(text: str):
    return json.loads(text, parse_constant=_refuse_constant)


def _first_bad(lines: list[bytes]) -> str:
    """Which line of a list that does not parse is bad, and why (parsed one by one: the slow
    way, only for a damaged list)."""
    for number, line in enumerate(lines[:-1], 1):
        try:
            _parse(line.decode("utf-8"))
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
    """Where the current list ends: past it the array holds nothing a record names (a store
    opened for writing cuts it there)."""
    return region["start"] + region["length"]


def plan_write(committed: bytes, region: dict, new: bytes, count: int) -> tuple[int, bytes, dict]:
    """(where to write, what, the new region) for replacing the committed list with `new`,
    never over the committed bytes (a crash before the record leaves them as they were): just
    the new entries after it where `new` extends it; otherwise the whole list at the array's
    start where it fits before the committed one (older lists lie there, named by no record),
    else right after it. So the array stays within about three lists, however often the list
    is rewritten (a build's load failures are sorted in among the earlier entries)."""
    if new.startswith(committed):  # only new entries: append them to the current list
        tail = new[len(committed):]
        return end(region), tail, {"start": region["start"], "length": len(new), "count": count,
                                   "crc32": zlib.crc32(tail, region["crc32"])}
    start = 0 if len(new) <= region["start"] else end(region)
    return start, new, {"start": start, "length": len(new), "count": count,
                        "crc32": zlib.crc32(new)}


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def read(container, region: dict) -> bytes:
    """The committed list's bytes, as stored."""
    if not region["length"]:
        return b""
    array = container.array(ARRAY, np.dtype("|u1"), end(region))
    return bytes(array.read(region["start"], end(region)))
