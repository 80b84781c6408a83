"""The Zarr v3 container: a local directory or any fsspec URL (memory://, s3://, ...).

Writes go through zarr-python. Reads of a local directory skip it: each array's zarr.json is
parsed here and, when the layout is the plain one tokstore writes (regular 1-D chunks, the bytes
codec, little-endian, no compression), chunk files are memory-mapped, so that reading one
sample costs a numpy slice instead of a zarr call (~400 us). Anything else -- URLs, compressed
copies -- is read through zarr one whole chunk at a time.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .chunks import ChunkedArray, map_file, map_side_by_side, truncate_chunked, write_growing
from .errors import NotAStoreError, StoreCorruptError, StoreError, StoreLockedError
from .format import RECORD_KEY, Record, chunk_length

LOCK_FILE = "tokstore.lock"


def local_dir(path: str) -> Path | None:
    """The directory a path names on this machine, or None for a remote/in-memory URL."""
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None if "://" in path else Path(path)


class ZarrContainer:
    backend = "zarr"

    def __init__(self, path: str, writable: bool):
        self.path, self.writable = path, writable
        self.dir = local_dir(path)
        self._target = str(self.dir) if self.dir is not None else path  # local: zarr's LocalStore
        self._group = None
        self._arrays: dict = {}
        self._lock_fd: int | None = None

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, record: Record, dtypes: dict, chunk_bytes: int,
               overwrite: bool) -> "ZarrContainer":
        import zarr
        from zarr.errors import ContainsArrayError, ContainsGroupError

        self = cls(path, writable=True)
        if self.dir is not None:
            occupied = self.dir.is_file() or (self.dir.is_dir() and any(self.dir.iterdir()))
            if occupied:
                if not overwrite:
                    raise StoreError(f"{path} already exists (pass overwrite=True to replace it)")
                if not (self.dir / "zarr.json").is_file():
                    raise StoreError(f"{path} exists and is not a Zarr store: not overwriting it")
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
        try:  # a local directory is empty by now; "w" would delete a lock file taken before
            self._group = zarr.open_group(self._target,
                                          mode="w" if overwrite and self.dir is None else "w-")
        except (ContainsGroupError, ContainsArrayError, FileExistsError):
            raise StoreError(f"{path} already exists (pass overwrite=True to replace it)") from None
        if self.dir is not None:
            self._lock()
        for name, dtype in dtypes.items():
            if name == "counts":  # fixed size, two slots of one chunk each
                shape, chunk = 2 * record.counts_length, record.counts_length
            else:
                shape, chunk = 0, chunk_length(dtype, chunk_bytes)
            self._group.create_array(name, shape=(shape,), chunks=(chunk,), dtype=dtype,
                                     compressors=None, filters=None, fill_value=0)
        return self

    @classmethod
    def open(cls, path: str, writable: bool) -> tuple["ZarrContainer", Record]:
        self = cls(path, writable)
        if self.dir is not None:
            if not (self.dir / "zarr.json").is_file():
                what = "does not exist" if not self.dir.exists() else "is not a tokstore store"
                raise NotAStoreError(f"{path} {what} (no zarr.json)")
            if writable:
                self._lock()
                for leftover in self.dir.rglob("*.partial"):  # temp files of a killed writer
                    leftover.unlink()
        return self, self._read_record()

    def _lock(self):
        self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreLockedError(f"{self.path} is open for writing by another process") from None

    def group(self):
        if self._group is None:
            import zarr

            try:
                self._group = zarr.open_group(self._target, mode="r+" if self.writable else "r")
            except Exception as exc:  # zarr raises assorted types for missing/broken metadata
                raise StoreCorruptError(f"{self.path}: zarr cannot open the group: {exc}") from None
        return self._group

    def _read_record(self) -> Record:
        if self.dir is not None:
            try:
                root = json.loads((self.dir / "zarr.json").read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreCorruptError(f"{self.path}: damaged zarr.json: {exc}") from None
            if not isinstance(root, dict) or root.get("node_type") != "group":
                raise NotAStoreError(f"{self.path} is not a tokstore store (not a Zarr group)")
            attrs = root.get("attributes") or {}
        else:
            import zarr

            try:
                self._group = zarr.open_group(self._target, mode="r+" if self.writable else "r")
            except FileNotFoundError:
                raise NotAStoreError(f"{self.path} is not a tokstore store (no Zarr group)"
                                     ) from None
            attrs = self._group.attrs.asdict()
        record = attrs.get(RECORD_KEY) if isinstance(attrs, dict) else None
        return Record.from_dict(record, self.path)

    # ---- reading -------------------------------------------------------------------------
    def array(self, name: str, dtype: np.dtype, length: int) -> ChunkedArray:
        raw = self._raw_layout(name, dtype, length) if self.dir is not None else None
        if raw is not None:
            chunk_len, chunk_file = raw

            def load(k: int) -> np.ndarray:
                try:
                    mapped = map_file(chunk_file(k))
                except FileNotFoundError:
                    raise StoreCorruptError(f"{name}: chunk file {chunk_file(k)} is missing"
                                            ) from None
                if mapped is None or len(mapped) != chunk_len * dtype.itemsize:
                    raise StoreCorruptError(f"{name}: chunk file {chunk_file(k)} has the wrong size")
                return mapped.view(dtype)

            def map_whole() -> np.ndarray | None:
                chunks = -(-length // chunk_len)
                return map_side_by_side([chunk_file(k) for k in range(chunks)],
                                        chunk_len * dtype.itemsize)

            return ChunkedArray(name, dtype, length, chunk_len, load, mapped=True,
                                map_whole=map_whole)
        array = self._zarr_array(name)
        if np.dtype(array.dtype) != dtype or array.ndim != 1 or array.shape[0] < length:
            raise StoreCorruptError(f"{name}: zarr array is {array.dtype}{list(array.shape)}, "
                                    f"the commit needs {dtype.name}[{length}]")
        chunk_len = array.chunks[0]

        def load(k: int) -> np.ndarray:
            return np.asarray(array[k * chunk_len:min((k + 1) * chunk_len, array.shape[0])])

        return ChunkedArray(name, dtype, length, chunk_len, load, mapped=False)

    def _raw_layout(self, name: str, dtype: np.dtype, length: int):
        """(chunk length, chunk path function) if the array's chunks are raw files, else None."""
        try:
            meta = json.loads((self.dir / name / "zarr.json").read_text())
        except FileNotFoundError:
            raise StoreCorruptError(f"{self.path}: array {name} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreCorruptError(f"{self.path}: damaged {name}/zarr.json: {exc}") from None
        try:
            (size,), (chunk_len,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
            grid, keys = meta["chunk_grid"]["name"], meta["chunk_key_encoding"]
            codecs, data_type = meta["codecs"], meta["data_type"]
        except (KeyError, TypeError, ValueError):
            return None  # not the plain layout: let zarr read it (and complain if need be)
        if data_type != dtype.name or size < length:
            raise StoreCorruptError(f"{name}: zarr array is {data_type}[{size}], the commit needs "
                                    f"{dtype.name}[{length}]")
        plain_codec = (len(codecs) == 1 and codecs[0].get("name") == "bytes"
                       and codecs[0].get("configuration", {}).get("endian", "little") == "little")
        if (grid != "regular" or not plain_codec or meta.get("storage_transformers")
                or keys.get("name") != "default"):
            return None
        separator = keys.get("configuration", {}).get("separator", "/")
        folder = str(self.dir / name)
        return chunk_len, lambda k: f"{folder}/c{separator}{k}"

    def _zarr_array(self, name: str):
        if name not in self._arrays:
            try:
                # chunks of zeros are real data here: write them (a missing chunk is damage)
                self._arrays[name] = self.group()[name].with_config({"write_empty_chunks": True})
            except KeyError:
                raise StoreCorruptError(f"{self.path}: array {name} is missing") from None
        return self._arrays[name]

    # ---- writing -------------------------------------------------------------------------
    def write(self, name: str, start: int, values: np.ndarray):
        write_growing(self._zarr_array(name), start, values)

    def truncate(self, name: str, length: int):
        truncate_chunked(self._zarr_array(name), length)

    def start_writing(self):
        """Nothing to switch on for zarr (HDF5 enters SWMR mode here)."""

    def write_record(self, record: Record):
        self.group().attrs.update({RECORD_KEY: record.to_dict()})

    def close(self):
        self._group, self._arrays = None, {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
