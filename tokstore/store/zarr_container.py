"""The Zarr v3 container: a local directory or any fsspec URL (memory://, s3://, ...).

A local directory is created in the plain layout tokstore writes (regular 1-D chunks, the bytes
codec, little-endian, no compression; see zarr_plain.py), and a local store in that layout is read
and written without zarr-python: each array's zarr.json is parsed here, chunk files are
memory-mapped, so that reading one sample costs a numpy slice instead of a zarr call (~400 us),
and written as zarr-python writes them (zarr_plain) without its ~1.5 ms a call. Anything else --
URLs, compressed copies -- goes through zarr-python, read one whole chunk at a time (a local copy
in another layout warns once: StoreFallbackWarning).

A local store is created in a temporary directory beside its path and renamed into place once
its first commit is on disk (a killed creation leaves only that, removed by the next create).
A commit fsyncs every chunk and metadata file written since the last commit and their
directories, then replaces the root zarr.json (the record) through a temporary file, fsync,
rename and a directory fsync (oscalls.replace_file).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import oscalls
from .chunks import ChunkedArray, map_file, map_side_by_side, truncate_chunked, write_growing
from .errors import (AFTER_COMMIT_POINT, NotAStoreError, StoreCorruptError, StoreError,
                     StoreFallbackWarning, StoreWriteError, refused_after_failure)
from .format import RECORD_KEY, Record, chunk_length
from . import zarr_plain
from .zarr_plain import PlainArray, plain_layout

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
        self._plain: dict[str, PlainArray | None] = {}  # written without zarr-python (or None)
        self._lock: oscalls.WriterLock | None = None
        self._creating: Path | None = None  # the temporary directory while being created
        self._root: dict | None = None      # the root zarr.json, rewritten at each commit
        self._touched: set[Path] = set()    # files and directories written since the last commit
        self._failed: str | None = None     # a commit failed past its commit point: no more writes

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, record: Record, dtypes: dict, chunk_bytes: int,
               overwrite: bool) -> "ZarrContainer":
        self = cls(path, writable=True)
        arrays = {}  # name -> (dtype, shape, chunk length)
        for name, dtype in dtypes.items():
            if name == "counts":  # fixed size, two slots of one chunk each
                arrays[name] = dtype, 2 * record.counts_length, record.counts_length
            else:
                arrays[name] = dtype, 0, chunk_length(dtype, chunk_bytes)
        if self.dir is None:
            self._create_through_zarr(arrays, overwrite)
            return self
        try:
            occupied = self.dir.is_file() or (self.dir.is_dir() and any(self.dir.iterdir()))
            if occupied:
                if not overwrite:
                    raise StoreError(f"{path} already exists (not replacing "
                                     f"it: TokenStore.create(..., overwrite=True) does)")
                if not (self.dir / "zarr.json").is_file():
                    raise StoreError(f"{path} exists and is not a Zarr store: not "
                                     f"overwriting it")
                oscalls.discard_store(self.dir, path, self.dir / LOCK_FILE)
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            oscalls.remove_abandoned(self.dir)
            self._creating, _, self._lock = oscalls.claim_creation_path(
                self.dir, path, make=Path.mkdir, undo=lambda _: None, fallback_name=LOCK_FILE)
            self._target = str(self._creating)
            self._create_local(arrays)
        except OSError as exc:
            self.close()
            raise StoreWriteError.from_os_error(path, "creating the store", exc) from None
        except BaseException:
            self.close()
            raise
        self._touched.update(self._creating.rglob("*"))  # all new: all synced at the commit
        return self

    def _create_local(self, arrays: dict):
        """The group and its arrays in the new, empty local directory: the files zarr-python
        writes, written without it (zarr_plain.create)."""
        zarr_plain.create(Path(self._target), arrays)
        self._root = dict(zarr_plain.GROUP_METADATA)  # the first commit's record goes in it

    def _create_through_zarr(self, arrays: dict, overwrite: bool):
        """The group and its arrays through zarr-python (URLs; `overwrite`: replace a store
        there, else refuse one). For a local directory only where a test or benchmark puts it
        in place of _create_local, to compare the files."""
        import zarr
        from zarr.errors import ContainsArrayError, ContainsGroupError

        mode = "a" if self._creating is not None else "w" if overwrite else "w-"
        try:
            self._group = zarr.open_group(self._target, mode=mode)
            for name, (dtype, shape, chunk) in arrays.items():
                self._group.create_array(name, shape=(shape,), chunks=(chunk,), dtype=dtype,
                                         compressors=None, filters=None, fill_value=0)
        except (ContainsGroupError, ContainsArrayError, FileExistsError):
            self.close()
            raise StoreError(f"{self.path} already exists (not replacing it: "
                             f"TokenStore.create(..., overwrite=True) does)") from None
        except OSError as exc:
            self.close()
            raise StoreWriteError.from_os_error(self.path, "creating the store", exc) from None
        except BaseException:
            self.close()
            raise

    def publish(self):
        """Rename a new local store into place once its first commit is on disk."""
        if self._creating is None:
            return
        try:
            os.rename(self._creating, self.dir)  # replaces an empty directory, not a full one
            oscalls.sync_dir(self.dir.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise StoreError(f"{self.path} already exists: another process created it "
                                 f"meanwhile") from None
            raise StoreWriteError.from_os_error(self.path, "creating the store", exc) from None
        self._lock.moved_to(self._creating, self.dir)
        self._creating, self._target = None, str(self.dir)
        self._group, self._arrays, self._plain = None, {}, {}

    @classmethod
    def open(cls, path: str, writable: bool, rollback: bool = False
             ) -> tuple["ZarrContainer", Record]:
        self = cls(path, writable)  # rollback: zarr keeps one record, there is none to go back to
        if self.dir is not None:
            if not (self.dir / "zarr.json").is_file():
                what = "does not exist" if not self.dir.exists() else "is not a tokstore store"
                raise NotAStoreError(f"{path} {what} (no zarr.json)")
            if writable:
                self._lock = oscalls.WriterLock.acquire(self.dir, path, self.dir / LOCK_FILE)
                try:  # temporary files of a killed writer (zarr's chunks, our records)
                    for leftover in [*self.dir.rglob("*.partial"),
                                     *self.dir.glob(".zarr.json.*.tmp")]:
                        leftover.unlink()
                except OSError as exc:
                    self.close()
                    raise StoreWriteError.from_os_error(path, "opening for writing", exc) from None
        try:
            return self, self._read_record()
        except BaseException:
            self.close()
            raise

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
            self._root = root
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
                except OSError as exc:  # a directory, EIO, ...
                    raise StoreCorruptError(f"{name}: cannot read chunk file {chunk_file(k)}: "
                                            f"{exc.strerror or exc}") from None
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
            raise StoreCorruptError(f"{self.path}: {name}: zarr array is {array.dtype}"
                                    f"{list(array.shape)}, "
                                    f"the commit needs {dtype.name}[{length}]")
        chunk_len = array.chunks[0]

        def load(k: int) -> np.ndarray:
            try:
                values = np.asarray(array[k * chunk_len:min((k + 1) * chunk_len, array.shape[0])])
            except Exception as exc:  # codecs raise what they like (BadGzipFile, TypeError, ...)
                raise StoreCorruptError(f"{self.path}: zarr cannot read chunk {k} of {name}: "
                                        f"{type(exc).__name__}: {exc}") from None
            if self.dir is not None:  # a local copy in another layout (compressed, ...) that reads
                oscalls.warn_fallback(f"zarr_layout:{self.path}",
                                      f"tokstore: {self.path}: array {name} is not in the plain "
                                      f"layout tokstore writes (raw little-endian chunks): it is "
                                      f"read through zarr, a chunk at a time (~400 us a sample "
                                      f"read) and copied into each process", StoreFallbackWarning)
            return values

        return ChunkedArray(name, dtype, length, chunk_len, load, mapped=False)

    def _raw_layout(self, name: str, dtype: np.dtype, length: int):
        """(chunk length, chunk path function) if the array's chunks are raw files, else None."""
        try:
            meta = json.loads((self.dir / name / "zarr.json").read_text())
        except FileNotFoundError:
            raise StoreCorruptError(f"{self.path}: array {name} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreCorruptError(f"{self.path}: damaged {name}/zarr.json: {exc}") from None
        layout = plain_layout(meta)
        if layout is None:
            return None  # not the plain layout: let zarr read it (and complain if need be)
        stored, size, chunk_len, separator = layout
        if stored != dtype or size < length:
            raise StoreCorruptError(f"{self.path}: {name}: zarr array is {stored.name}[{size}], "
                                    f"the commit needs {dtype.name}[{length}]")
        folder = str(self.dir / name)
        return chunk_len, lambda k: f"{folder}/c{separator}{k}"

    def _zarr_array(self, name: str):
        if name not in self._arrays:
            try:
                # chunks of zeros are real data here: write them (a missing chunk is damage)
                self._arrays[name] = self.group()[name].with_config({"write_empty_chunks": True})
            except KeyError:
                raise StoreCorruptError(f"{self.path}: array {name} is missing") from None
            except Exception as exc:  # metadata zarr cannot parse (unknown codec, bad JSON)
                raise StoreCorruptError(f"{self.path}: zarr cannot open array {name}: "
                                        f"{type(exc).__name__}: {exc}") from None
        return self._arrays[name]

    # ---- writing -------------------------------------------------------------------------
    def _plain_array(self, name: str) -> PlainArray | None:
        if self.dir is None:
            return None
        if name not in self._plain:
            self._plain[name] = PlainArray.open(Path(self._target) / name,
                                                self._touched)
        return self._plain[name]

    def _check_writable(self):
        """A commit that failed past its commit point may be the store's last: this object's
        next one would write over the counts slot that record names. Reopen instead."""
        if self._failed is not None:
            raise refused_after_failure(self.path, self._failed)

    def write(self, name: str, start: int, values: np.ndarray):
        self._check_writable()
        plain = self._plain_array(name)
        array = self._zarr_array(name) if plain is None else None  # its errors name the store
        try:
            if plain is not None:
                plain.write(start, values)  # notes what it changes in self._touched
                return
            self._touch(name, array, start, start + len(values),
                        array.shape[0] < start + len(values))
            write_growing(array, start, values)
        except OSError as exc:
            raise StoreWriteError.from_os_error(self.path, f"writing {name}", exc) from None
        except StoreCorruptError as exc:  # a damaged chunk file PlainArray found
            raise StoreCorruptError(f"{self.path}: {name}: {exc}") from None

    def truncate(self, name: str, length: int):
        self._check_writable()
        plain = self._plain_array(name)
        array = self._zarr_array(name) if plain is None else None  # its errors name the store
        try:
            if plain is not None:
                plain.truncate(length)
                return
            if array.shape[0] > length:
                self._touch(name, array, length, array.shape[0], True)
            truncate_chunked(array, length)
        except OSError as exc:
            raise StoreWriteError.from_os_error(self.path, f"truncating {name}", exc) from None
        except StoreCorruptError as exc:  # a damaged chunk file PlainArray found
            raise StoreCorruptError(f"{self.path}: {name}: {exc}") from None

    def _touch(self, name: str, array, start: int, stop: int, metadata: bool):
        """Note the chunk files (and their directories) that values [start, stop) land in."""
        if self.dir is None or stop <= start:
            return
        folder = Path(self._target) / name
        chunk_len = array.chunks[0]
        for k in range(start // chunk_len, (stop - 1) // chunk_len + 1):
            chunk = folder / array.metadata.encode_chunk_key((k,))
            self._touched.update((chunk, chunk.parent))
        if metadata:  # a resize rewrites the array's zarr.json (and may delete chunk files)
            self._touched.update((folder / "zarr.json", folder))

    def start_writing(self):
        """Nothing to switch on for zarr (HDF5 enters SWMR mode here)."""

    def write_record(self, record: Record):
        """The commit: every file written since the last one synced, then the record."""
        if self.dir is None:
            try:
                self.group().attrs.update({RECORD_KEY: record.to_dict()})
            except OSError as exc:
                raise StoreWriteError.from_os_error(self.path, "writing the commit record",
                                                    exc) from None
            return
        self._check_writable()
        if self._lock is not None:
            self._lock.check()
        where = Path(self._target)
        data = None  # the new zarr.json, once made
        try:
            if self._root is None:  # a store zarr-python created: the group it wrote
                self._root = json.loads((where / "zarr.json").read_text())
            root = {**self._root, "attributes": {**(self._root.get("attributes") or {}),
                                                 RECORD_KEY: record.to_dict()}}
            for path in sorted(self._touched, key=lambda p: (p.is_dir(), str(p))):
                try:  # files first, then the directories holding them
                    oscalls.sync_dir(path) if path.is_dir() else oscalls.sync_file(path)
                except FileNotFoundError:  # a chunk file a truncation deleted
                    pass
            data = json.dumps(root, indent=2, allow_nan=False).encode()
            oscalls.replace_file(where / "zarr.json", data)
        except OSError as exc:
            landed = data is not None and _may_hold(where / "zarr.json", data)
            error = StoreWriteError.from_os_error(
                self.path, AFTER_COMMIT_POINT if landed else "committing", exc)
            if landed:
                self._failed = str(error)
            raise error from None
        self._root = root
        self._touched.clear()

    def close(self):
        self._group, self._arrays, self._plain = None, {}, {}
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._creating is not None:  # a creation that did not finish
            shutil.rmtree(self._creating, ignore_errors=True)
            self._creating = None


def _may_hold(path: Path, data: bytes) -> bool:
    """Whether the file at `path` may hold `data` (a commit's zarr.json renamed into place before
    a sync failed): it does, or it cannot be read back to tell."""
    try:
        return path.read_bytes() == data
    except OSError:
        return True
