"""TokenStore: the one object callers use to create, append to, and read a token store."""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np

from . import skipped as skipped_list
from .batch import SampleBatch
from .captions import captioned
from .check import check_store
from .errors import NameNotFoundError, NotAStoreError, StoreCorruptError, StoreError
from .format import (DEFAULT_CHUNK_BYTES, FORMAT_VERSION, MAX_CHUNK_BYTES, MAX_CODEBOOK_SIZE,
                     OFFSET_ARRAYS, Record, array_dtypes, check_code_dtype, default_code_dtype,
                     json_safe, probabilities)
from .hdf5_container import HDF5Container
from .reader import StoreReader
from .writer import StoreWriter
from .zarr_container import ZarrContainer, local_dir

BACKENDS = {"zarr": ZarrContainer, "hdf5": HDF5Container}
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class Sample:
    """One sample: `.codes` is read at once (a read-only view); name and captions on demand."""

    __slots__ = ("index", "codes", "_reader")

    def __init__(self, reader: StoreReader, index: int):
        self.index, self._reader = index, reader
        self.codes = reader.codes(index)

    @property
    def name(self) -> str:
        return self._reader.name(self.index)

    @property
    def texts(self) -> list[str]:
        """Caption lines verbatim, as readlines() returned them ('\\n' and blank lines kept)."""
        return self._reader.texts(self.index)

    def __repr__(self) -> str:
        return f"Sample(index={self.index}, name={self.name!r}, {len(self.codes)} codes)"


def _int_within(value, most: int) -> bool:
    """An int (not a bool) in [1, most]."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= value <= most


class TokenStore:
    """A chunked, append-only store of VQ-VAE codes with captions (see format.py).

    Reads always show the last commit, also in a store opened for writing: appended samples
    become visible (to this object and to other processes) at `commit()`.
    """

    def __init__(self, container, record: Record, writable: bool):
        self._container, self._record = container, record
        self._dtypes = array_dtypes(record.code_dtype)
        self._reader: StoreReader | None = None
        self._writer: StoreWriter | None = None
        self._closed = False
        self._skipped: tuple | None = None  # (region, decoded list) of the last read
        reader = self._read()  # reads the offsets and checks every array against the record
        if writable:
            self._writer = StoreWriter(container, record, self._dtypes, reader.counts, self._read)

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path, codebook_size: int, backend: str | None = None, meta: dict | None = None,
               code_dtype: str | None = None, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
               overwrite: bool = False) -> "TokenStore":
        """A new, empty, writable store. backend: "zarr" (a directory or fsspec URL) or "hdf5"
        (one file); by default "hdf5" for paths ending in .h5/.hdf5, else "zarr"."""
        path = os.fspath(path)
        if not _int_within(codebook_size, MAX_CODEBOOK_SIZE):
            raise StoreError(f"codebook_size must be an int in [1, {MAX_CODEBOOK_SIZE}], "
                             f"not {codebook_size!r}")
        codebook_size = int(codebook_size)
        backend = backend or ("hdf5" if path.lower().endswith(HDF5_SUFFIXES) else "zarr")
        if backend not in BACKENDS:
            raise StoreError(f"backend must be 'zarr' or 'hdf5', not {backend!r}")
        if not _int_within(chunk_bytes, MAX_CHUNK_BYTES):
            raise StoreError(f"chunk_bytes must be an int in [1, {MAX_CHUNK_BYTES}], "
                             f"not {chunk_bytes!r}")
        from .. import __version__

        code_dtype = check_code_dtype(code_dtype or default_code_dtype(codebook_size), codebook_size)
        meta = json_safe(meta or {})
        skipped = meta.pop("skipped", None)  # kept in its array, not in the record
        record = Record.empty(codebook_size, code_dtype, meta, __version__)
        dtypes = array_dtypes(code_dtype)
        local = local_dir(path)
        if local is not None and local.is_symlink() and not local.exists():  # not made through it
            raise StoreError(f"{path} is a symbolic link to a missing {os.readlink(local)}: "
                             f"give the real path, or remove the link")
        container = BACKENDS[backend].create(path, record, dtypes, chunk_bytes, overwrite)
        try:
            for name in OFFSET_ARRAYS:
                container.write(name, 0, np.zeros(1, dtypes[name]))
            container.write("counts", 0, np.zeros(record.counts_length, np.int64))  # slot 0
            container.write_record(record)
            container.start_writing()
            container.publish()  # a local store appears at its path only now, whole
            store = cls(container, record, writable=True)
            if skipped is not None:
                store.update_meta({"skipped": skipped})
            return store
        except BaseException:
            container.close()
            raise

    @classmethod
    def open(cls, path, mode: str = "r", *, rollback: bool = False) -> "TokenStore":
        """Open at its last commit. mode "r" reads; "a" also appends, after cutting away
        whatever a killed writer left past the last commit. A damaged newest commit record is an
        error; rollback=True opens the previous commit instead (HDF5 keeps two; with mode "a"
        the next commit overwrites the damaged one)."""
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', not {mode!r}")
        path = os.fspath(path)
        local = local_dir(path)
        if local is not None and not local.exists():
            raise NotAStoreError(f"{path} does not exist")
        container_type = HDF5Container if local is not None and local.is_file() else ZarrContainer
        container, record = container_type.open(path, writable=mode == "a", rollback=rollback)
        try:
            if mode == "a":
                for name in record.arrays:
                    container.truncate(name, record.array_lengths[name])
                if record.skipped is not None:
                    container.truncate(skipped_list.ARRAY, skipped_list.end(record.skipped))
                container.start_writing()
            return cls(container, record, writable=mode == "a")
        except BaseException:
            container.close()
            raise

    def close(self):
        """Commit what was appended since the last commit (writable stores), then release."""
        self._close(commit=True)

    def _close(self, commit: bool):
        if self._closed:
            return
        try:
            if commit and self._writer is not None and self._writer.dirty:
                self.commit()
        finally:
            self._closed, self._reader, self._writer = True, None, None
            self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self._close(commit=True)
            return
        try:
            self._close(commit=False)  # after an error, keep only the last commit
        except Exception as failed:  # noqa: BLE001 - the first error is the one to see
            note = f"closing {self.path} after that failed too: {failed}"
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)
            else:
                warnings.warn(note, RuntimeWarning, stacklevel=2)

    # ---- writing -------------------------------------------------------------------------
    def _write(self) -> StoreWriter:
        if self._writer is None:
            raise StoreError(f"{self.path} is {'closed' if self._closed else 'open read-only'}")
        return self._writer

    def append(self, names, codes_list, texts_list):
        """Add samples (visible at the next commit). All-or-nothing: a bad batch adds nothing."""
        self._write().append(names, codes_list, texts_list)

    def update_meta(self, meta: dict):
        """Merge keys into the provenance meta, written at the next commit."""
        writer = self._write()
        meta = json_safe(meta)
        if "skipped" in meta and writer.record.skipped is not None:  # a list in its array
            encoded = skipped_list.encode(meta["skipped"])  # refused now, not at the commit
            writer.skipped, meta["skipped"] = meta["skipped"], []  # [] marks: one was set
            writer.skipped_bytes = encoded
        writer.meta.update(meta)
        writer.dirty = True

    def commit(self):
        """Make everything appended so far durable and visible, atomically."""
        writer = self._write()
        if writer.dirty:
            self._record = writer.commit()
            self._reader = None

    # ---- reading -------------------------------------------------------------------------
    def _read(self) -> StoreReader:
        if self._reader is None:
            if self._closed:
                raise StoreError(f"{self.path} is closed")
            self._reader = StoreReader(self._container, self._record, self._dtypes)
        return self._reader

    def __len__(self) -> int:
        return self._record.samples

    def __getitem__(self, key) -> Sample:
        reader = self._reader or self._read()
        if type(key) is not int or not 0 <= key < reader.n:
            key = self._index(key)
        return Sample(reader, key)

    def _index(self, key) -> int:
        if isinstance(key, str):
            return self.index_of(key)
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"a store is indexed by int or name, not {type(key).__name__}")
        n = len(self)
        index = int(key) + n if key < 0 else int(key)
        if not 0 <= index < n:
            raise IndexError(f"sample index {int(key)} out of range for a store of {n}")
        return index

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __contains__(self, name) -> bool:
        try:
            self.index_of(name)
        except NameNotFoundError:
            return False
        return True

    def codes(self, i) -> np.ndarray:
        return self[i].codes

    def batch(self, indices) -> SampleBatch:
        """Many samples at once (ints in range): codes joined in one array, names and caption
        lines decoded only when asked for (see batch.py). What a DataLoader batch reads."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise TypeError("a batch is a 1-D sequence of sample indices")
        indices = indices.astype(np.int64, copy=False)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"sample indices outside [0, {len(self)}) in a batch")
        return SampleBatch(self._reader or self._read(), indices)

    def texts(self, i) -> list[str]:
        return self._read().texts(self._index(i))

    def name(self, i) -> str:
        return self._read().name(self._index(i))

    def index_of(self, name: str) -> int:
        """Index of a sample name (NameNotFoundError, a KeyError, if absent)."""
        return self._read().index_of(name)

    @property
    def names(self) -> list[str]:
        """All names in order: a list decoded on first use (~0.5 s and ~200 MB for 2M samples)."""
        return self._read().names

    @property
    def lengths(self) -> np.ndarray:
        return self._read().lengths

    def select(self, min_len=None, max_len=None, name_glob=None, text_contains=None) -> np.ndarray:
        """Indices (int64, ascending) of samples passing every given filter: code count within
        [min_len, max_len]; name matching a shell pattern (`*` also matches `/`); a caption line
        containing `text_contains` (ASCII letters compare case-insensitively)."""
        return self._read().select(min_len, max_len, name_glob, text_contains)

    @property
    def counts(self) -> np.ndarray:
        """int64 [codebook_size + 2]: each code, then end tokens (one per sample), then pad (0)."""
        return self._read().counts

    def probs(self) -> np.ndarray:
        """counts / total as the legacy probability file holds it (see `probabilities`)."""
        return probabilities(self.counts)

    def check(self) -> list[str]:
        """Read every committed byte; a list of problems, empty when the store is healthy."""
        problems = check_store(self._read())
        try:
            self.skipped
        except StoreCorruptError as exc:
            problems.append(str(exc))
        return problems

    @property
    def meta(self) -> dict:
        source = self._writer.meta if self._writer else self._record.meta
        try:
            meta = copy.deepcopy({k: None if k == "skipped" else v for k, v in source.items()})
        except RecursionError:  # a record written by hand or before meta's depth was bounded
            raise StoreCorruptError(f"{self.path}: the commit record's meta is nested too deeply "
                                    "to read") from None
        if "skipped" in source:
            meta["skipped"] = self.skipped  # unbounded: copied entry by entry (skipped.copied)
        return meta

    @property
    def skipped(self) -> list[dict]:
        """The split entries a build left out ({name, path, reason}), as meta["skipped"]
        shows them too: kept in the store's `skipped` array, or in meta in older stores."""
        if self._writer is not None and self._writer.skipped is not None:
            return skipped_list.copied(self._writer.skipped)
        region = self._record.skipped
        if region is None:
            meta = self._writer.meta if self._writer else self._record.meta
            listed = meta.get("skipped") or []
            return skipped_list.copied(skipped_list.check_entries(listed, self.path))
        if self._skipped is None or self._skipped[0] != region:
            if self._closed:
                raise StoreError(f"{self.path} is closed")
            data = skipped_list.read(self._container, region)
            self._skipped = (region, skipped_list.decode(data, region, self.path))
        return skipped_list.copied(self._skipped[1])

    def captioned(self) -> np.ndarray:
        """bool per sample: at least one caption line that is not blank (what training keeps)."""
        return captioned(self._read())

    @property
    def format_version(self) -> int:
        return FORMAT_VERSION

    @property
    def written_by(self) -> str:
        """The tokstore version that made the last commit."""
        return self._record.tokstore_version

    @property
    def codebook_size(self) -> int:
        return self._record.codebook_size

    @property
    def end_token(self) -> int:
        return self._record.end_token

    @property
    def pad_token(self) -> int:
        return self._record.pad_token

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(self._record.code_dtype)

    @property
    def backend(self) -> str:
        return self._container.backend

    @property
    def path(self) -> str:
        return self._container.path

    @property
    def mode(self) -> str:
        return "a" if self._writer is not None else "r"

    def __repr__(self) -> str:
        return (f"TokenStore({self.path!r}, backend={self.backend!r}, samples={len(self)}, "
                f"codebook_size={self.codebook_size}, mode={self.mode!r})")
