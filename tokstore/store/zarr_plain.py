"""The plain Zarr v3 layout tokstore writes -- one regular grid of 1-D chunks, the bytes codec,
little-endian, no compression -- recognised from an array's zarr.json, and created and written in
a local directory without zarr-python.

zarr-python costs ~1.5 ms a call (an event loop and a thread hop for every file): a commit
writes and grows each of a dozen arrays (~30 ms a commit, most of a small build's time), and
creating a store's group and arrays took ~45 ms. A local store in this layout is created
(`create`) and its arrays written here, to the same files zarr-python writes:
- creation: the group's zarr.json and each array's, as `zarr.open_group` and `create_array`
  (no compressors, no filters, fill value 0) write them;
- each chunk a full-size file (zeros past the data, as write_empty_chunks does), rewritten whole
  through a temporary `*.partial` file beside it and a rename, so that a process that has the old
  file mapped keeps reading the old bytes and a crash leaves the old file or the new one. The
  zeros past the array's values are not written: the file is extended over them (a hole where
  the file system makes one), so a commit costs the bytes its arrays hold, not ~512 KiB each;
- a resize rewrites the array's zarr.json with the new shape (the same way); a shrink first
  removes the chunk files past the new end.
Files are not synced here: each is noted (before it changes) for the container's commit to sync.
Anything else (URLs, other layouts) is written through zarr-python.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from . import oscalls
from .errors import StoreCorruptError

METADATA = "zarr.json"
GROUP_METADATA = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def array_metadata(dtype: np.dtype, shape: int, chunk_len: int) -> dict:
    """A new 1-D array's zarr.json in the plain layout, with zarr-python's keys in its order (and
    no endianness for one-byte values, as it writes them)."""
    dtype = np.dtype(dtype)
    codec = {"name": "bytes"} if dtype.itemsize == 1 else {
        "name": "bytes", "configuration": {"endian": "little"}}
    return {"shape": [shape], "data_type": dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_len]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [codec],
            "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def encode(meta: dict) -> bytes:
    """A zarr.json's bytes, formatted as zarr-python formats them."""
    return json.dumps(meta, allow_nan=True, indent=2).encode()


def create(folder: Path, arrays: dict[str, tuple[np.dtype, int, int]]) -> None:
    """The group's and each array's zarr.json in the existing, empty `folder` (arrays: name ->
    (dtype, shape, chunk length)), written one at a time as zarr-python writes them. Not synced:
    the folder is a new store's temporary one, synced whole by its first commit."""
    replace_unsynced(folder / METADATA, encode(GROUP_METADATA))
    for name, (dtype, shape, chunk_len) in arrays.items():
        (folder / name).mkdir()
        replace_unsynced(folder / name / METADATA, encode(array_metadata(dtype, shape, chunk_len)))


def plain_layout(meta) -> tuple[np.dtype, int, int, str] | None:
    """(dtype, shape, chunk length, chunk key separator) of an array's parsed zarr.json when its
    chunk files are raw values (the plain layout, for reading: whatever the fill value), else
    None."""
    try:
        (size,), (chunk_len,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        grid, keys = meta["chunk_grid"]["name"], meta["chunk_key_encoding"]
        codecs, data_type = meta["codecs"], meta["data_type"]
        plain_codec = (len(codecs) == 1 and codecs[0].get("name") == "bytes"
                       and codecs[0].get("configuration", {}).get("endian", "little") == "little")
        separator = keys.get("configuration", {}).get("separator", "/")
        dtype = np.dtype(data_type)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if (grid != "regular" or not plain_codec or meta.get("storage_transformers")
            or keys.get("name") != "default" or dtype.name != data_type
            or not isinstance(size, int)
            or not isinstance(chunk_len, int) or chunk_len < 1 or separator not in ("/", ".")):
        return None
    return dtype.newbyteorder("<"), size, chunk_len, separator


def replace_unsynced(path: Path, data: bytes, size: int = 0) -> None:
    """`data` (zeros after it to `size`) into `path` through a temporary `*.partial` file beside
    it (the name zarr-python gives its own, which opening a store for writing removes) and a
    rename, no fsync."""
    oscalls.replace_file(path, data, durable=False, size=size,
                         temporary=path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial"))


class PlainArray:
    """A local 1-D array in the plain layout, written file by file (see the module docstring)."""

    def __init__(self, folder: Path, meta: dict, layout: tuple[np.dtype, int, int, str],
                 touched: set[Path]):
        self.folder, self.meta, self.touched = folder, meta, touched
        self.dtype, self.shape, self.chunk_len, self._separator = layout

    @classmethod
    def open(cls, folder: Path, touched: set[Path] | None = None) -> "PlainArray | None":
        """The array in `folder`, or None where its zarr.json is not the plain layout (or
        cannot be read: zarr-python then reports it). Every file (and its directory) is added
        to `touched` before it is changed, so that a write failing half-way still leaves in it
        all that the next commit must sync."""
        try:
            meta = json.loads((folder / METADATA).read_bytes())
        except (OSError, ValueError):
            return None
        layout = plain_layout(meta)
        if layout is None or meta.get("fill_value") not in (0, 0.0):  # chunks are padded with 0
            return None
        return cls(folder, meta, layout, set() if touched is None else touched)

    def chunk_path(self, k: int) -> Path:
        return self.folder / f"c{self._separator}{k}"

    def chunks_of(self, start: int, stop: int) -> range:
        """The chunk indices that values [start, stop) fall in."""
        return range(start // self.chunk_len, (stop - 1) // self.chunk_len + 1)

    def write(self, start: int, values: np.ndarray) -> None:
        """values into [start, start + len); grows the array first where it is too short."""
        stop, had = start + len(values), self.shape
        if stop > self.shape:
            self._set_shape(stop)
        values = np.ascontiguousarray(values, dtype=self.dtype)
        for k in self.chunks_of(start, stop) if stop > start else ():
            base = k * self.chunk_len
            lo, hi = max(start, base), min(stop, base + self.chunk_len)
            keep = had - base if lo > base or hi < had else 0  # values around the new ones
            chunk = self._chunk(k, keep, hi - base, required=min(lo, had) > base)
            chunk[lo - base:hi - base] = values[lo - start:hi - start]
            self._put_chunk(k, chunk)

    def truncate(self, length: int) -> None:
        """Cut the array back to `length`, zeroing the rest of its last chunk as a fresh write
        leaves it."""
        if self.shape <= length:
            return
        base = length // self.chunk_len * self.chunk_len
        if length > base:  # the new last chunk keeps [base, length)
            k = length // self.chunk_len
            self._put_chunk(k, self._chunk(k, length - base, length - base, required=True))
        self._set_shape(length)

    def _chunk(self, k: int, keep: int, upto: int, required: bool) -> np.ndarray:
        """The start of chunk k to change, as long as the values to keep and the first `upto`:
        its first `keep` values (at most a chunk) read from its file, zeros after them (the
        array's values past its shape are zeros: writes and truncations leave them so; the rest
        of the chunk is left to its file's hole). required: values written before lie before the
        ones to write, so the file must be there (a missing one is damage, not zeros to commit in
        their place); else a missing file reads as zeros."""
        keep = min(max(keep, 0), self.chunk_len)
        chunk = np.zeros(max(keep, upto), self.dtype)
        if not keep:
            return chunk
        full = self.chunk_len * self.dtype.itemsize
        try:  # as the reader opens it: a FIFO put in its place must not block
            with open(oscalls.open_chunk(str(self.chunk_path(k))), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(keep * self.dtype.itemsize) if size == full else b""
        except FileNotFoundError:
            if required:
                raise StoreCorruptError(f"chunk file {self.chunk_path(k)} is missing "
                                        f"(it holds values written before)") from None
            return chunk
        if size != full or len(data) != keep * self.dtype.itemsize:  # committed values in it
            raise StoreCorruptError(f"chunk file {self.chunk_path(k)} holds {size} bytes, not "
                                    f"{full}")
        chunk[:keep] = np.frombuffer(data, self.dtype)
        return chunk

    def _touch(self, path: Path) -> Path:
        self.touched.update((path, path.parent))
        return path

    def _put_chunk(self, k: int, values: np.ndarray) -> None:
        """Chunk k's file: `values`, then zeros to the chunk's size (written as a hole: a small
        array's chunks cost the bytes it holds, not the ~512 KiB of their size)."""
        path = self._touch(self.chunk_path(k))
        path.parent.mkdir(exist_ok=True)
        replace_unsynced(path, values.tobytes(), self.chunk_len * self.dtype.itemsize)

    def _set_shape(self, length: int) -> None:
        """The new shape into zarr.json; chunk files past a shorter one removed first (as
        zarr-python does), so that a kill in between leaves the old shape for the next
        truncation to cut back again, not files past the end that none would remove."""
        for k in range(-(-length // self.chunk_len), -(-self.shape // self.chunk_len)):
            self._touch(self.chunk_path(k)).unlink(missing_ok=True)
        meta = {**self.meta, "shape": [length]}
        replace_unsynced(self._touch(self.folder / METADATA), encode(meta))
        self.meta, self.shape = meta, length
