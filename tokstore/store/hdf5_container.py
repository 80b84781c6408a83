"""The HDF5 container: one file, written in SWMR mode, commit record in the userblock.

Why this shape:
 - HDF5 keeps metadata in a cache and writes it at flush time; a writer killed mid-flush can leave
   an unreadable file. In SWMR (single-writer/multiple-reader) mode HDF5 orders its metadata
   writes so that the file on disk is consistent at every instant -- for concurrent readers and
   equally after a SIGKILL. SWMR needs `libver="latest"` and forbids new objects/attributes once
   on, so everything is created first and the commit record is kept outside HDF5's structures.
 - The commit record lives in the userblock, the first USERBLOCK bytes that HDF5 reserves for the
   user and never touches: two slots written alternately with plain `pwrite`, each framed with a
   sequence number and a crc32, so a torn record write leaves the other slot valid.
 - A SWMR writer releases HDF5's file lock, and a killed one leaves the superblock flagged "open
   for write", which HDF5 refuses to reopen. So writers hold their own `flock` on the file, and a
   writer that gets the lock knows the flags are stale and clears them (what `h5clear -s`
   does: flags to 0, end-of-file address to at least the file size, superblock checksum redone).
 - Readers open with `swmr=True, locking=False` and read the record *before* HDF5's metadata,
   so every committed chunk is indexed. Chunk byte offsets are looked up once per array, and raw
   chunks are memory-mapped there: reads make no HDF5 call (also none in forked workers).
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .chunks import ChunkedArray, map_file, truncate_chunked, write_growing
from .errors import NotAStoreError, StoreCorruptError, StoreError, StoreLockedError
from .format import Record, chunk_length

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
USERBLOCK = 1 << 20
SLOT_SIZE = USERBLOCK // 2
SLOT_MAGIC = b"TOKSTORE"
SLOT_HEADER = struct.Struct("<8sQII")  # magic, sequence number, payload length, payload crc32


def superblock_position(fd: int) -> int | None:
    """HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (after any userblock)."""
    size = os.fstat(fd).st_size
    position = 0
    while position + 8 <= size:
        if os.pread(fd, 8, position) == HDF5_SIGNATURE:
            return position
        position = 512 if position == 0 else position * 2
    return None


class HDF5Container:
    backend = "hdf5"

    def __init__(self, path: str, file, fd: int, writable: bool, sequence: int):
        self.path, self.writable = path, writable
        self._file, self._fd, self._sequence = file, fd, sequence
        self._map = None

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, record: Record, dtypes: dict, chunk_bytes: int,
               overwrite: bool) -> "HDF5Container":
        import h5py

        target = Path(path)
        if target.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists (pass overwrite=True to replace it)")
            if target.is_dir() or not _is_store_file(target):
                raise StoreError(f"{path} exists and is not a tokstore HDF5 store: "
                                 f"not overwriting it")
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _lock(fd, path)
            file = h5py.File(target, "w", libver="latest", userblock_size=USERBLOCK, locking=False)
            for name, dtype in dtypes.items():
                if name == "counts":  # fixed size, two slots of one chunk each
                    file.create_dataset(name, shape=(2 * record.counts_length,), dtype=dtype,
                                        chunks=(record.counts_length,), fillvalue=0)
                else:
                    file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                        chunks=(chunk_length(dtype, chunk_bytes),), fillvalue=0)
            for key, value in record.to_dict().items():  # static facts, for h5dump and friends
                if isinstance(value, int):
                    file.attrs[key] = np.int64(value)
                elif isinstance(value, str):
                    file.attrs[key] = np.bytes_(value.encode())  # fixed-length, not vlen
        except BaseException:
            os.close(fd)
            raise
        return cls(path, file, fd, writable=True, sequence=0)

    @classmethod
    def open(cls, path: str, writable: bool) -> tuple["HDF5Container", Record]:
        import h5py

        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            position = superblock_position(fd)
            if position is None:
                raise NotAStoreError(f"{path} is not a tokstore store (neither a Zarr directory "
                                     f"nor an HDF5 file)")
            if position != USERBLOCK:
                raise NotAStoreError(f"{path} is an HDF5 file but not a tokstore store")
            if writable:
                _lock(fd, path)
                _clear_stale_write_flags(fd, position, path)
            record, sequence = _read_record(fd, path)  # before HDF5's metadata: see docstring
            try:
                if writable:
                    file = h5py.File(path, "r+", libver="latest", locking=False)
                else:
                    file = h5py.File(path, "r", swmr=True, locking=False)
            except OSError as exc:
                if "already open for write" in str(exc):
                    raise StoreError(f"{path} is being opened for writing, or its writer died "
                                     f"before entering SWMR mode: retry, or open it with mode='a' "
                                     f"to recover") from None
                raise StoreCorruptError(f"{path}: HDF5 cannot open the file: {exc}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, file, fd, writable, sequence), record

    def start_writing(self):
        """Enter SWMR mode (after any truncation: SWMR cannot shrink datasets)."""
        self._file.swmr_mode = True

    # ---- reading -------------------------------------------------------------------------
    def _dataset(self, name: str):
        try:
            return self._file[name]
        except KeyError:
            raise StoreCorruptError(f"{self.path}: array {name} is missing") from None

    def array(self, name: str, dtype: np.dtype, length: int) -> ChunkedArray:
        dataset = self._dataset(name)
        if dataset.dtype != dtype or dataset.ndim != 1 or dataset.shape[0] < length:
            raise StoreCorruptError(f"{name}: HDF5 dataset is {dataset.dtype}{list(dataset.shape)}, "
                                    f"the commit needs {dtype.name}[{length}]")
        if dataset.chunks is None:  # contiguous (a repacked copy): one read through h5py
            return ChunkedArray(name, dtype, length, max(length, 1),
                                lambda k: dataset[:length], mapped=False)
        chunk_len = dataset.chunks[0]
        if dataset.id.get_create_plist().get_nfilters():  # compressed copy: read through h5py
            return ChunkedArray(name, dtype, length, chunk_len,
                                lambda k: dataset[k * chunk_len:(k + 1) * chunk_len], mapped=False)
        nbytes = chunk_len * dtype.itemsize
        where: dict[int, int] = {}  # chunk -> byte offset, all found now: no HDF5 call per read
        dataset.id.chunk_iter(lambda info: where.__setitem__(info.chunk_offset[0] // chunk_len,
                                                             info.byte_offset))

        def load(k: int) -> np.ndarray:
            offset = where.get(k)
            if offset is None:
                raise StoreCorruptError(f"{name}: chunk {k} is missing from the HDF5 file")
            if self._map is None or offset + nbytes > len(self._map):
                self._map = map_file(self.path)  # the file grew since the last map
            return self._map[offset:offset + nbytes].view(dtype)

        return ChunkedArray(name, dtype, length, chunk_len, load, mapped=True)

    def chunk_location(self, name: str, k: int) -> tuple[int, int]:
        """(byte offset, size) of chunk k in the file: for tests that damage a chunk."""
        dataset = self._dataset(name)
        info = dataset.id.get_chunk_info_by_coord((k * dataset.chunks[0],))
        return info.byte_offset, info.size

    # ---- writing -------------------------------------------------------------------------
    def write(self, name: str, start: int, values: np.ndarray):
        write_growing(self._dataset(name), start, values)

    def truncate(self, name: str, length: int):
        truncate_chunked(self._dataset(name), length)

    def write_record(self, record: Record):
        """Flush all data and HDF5 metadata, then write the record into the older slot."""
        self._file.flush()
        payload = json.dumps(record.to_dict(), separators=(",", ":")).encode()
        if SLOT_HEADER.size + len(payload) > SLOT_SIZE:
            raise StoreError(f"{self.path}: the commit record is {len(payload)} bytes, over the "
                             f"HDF5 limit of {SLOT_SIZE - SLOT_HEADER.size}: keep meta smaller")
        self._sequence += 1
        header = SLOT_HEADER.pack(SLOT_MAGIC, self._sequence, len(payload), zlib.crc32(payload))
        os.pwrite(self._fd, header + payload, (self._sequence % 2) * SLOT_SIZE)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self._map = None
        os.close(self._fd)


def _is_store_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return superblock_position(f.fileno()) == USERBLOCK


def _lock(fd: int, path: str):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreLockedError(f"{path} is open for writing by another process") from None


def _read_record(fd: int, path: str) -> tuple[Record, int]:
    """The newest slot whose frame and crc are intact, and its sequence number."""
    best, damaged = None, False
    for slot in range(2):
        header = os.pread(fd, SLOT_HEADER.size, slot * SLOT_SIZE)
        magic, sequence, length, crc = SLOT_HEADER.unpack(header)
        if magic != SLOT_MAGIC:
            damaged |= header != bytes(SLOT_HEADER.size)
            continue
        payload = os.pread(fd, min(length, SLOT_SIZE), slot * SLOT_SIZE + SLOT_HEADER.size)
        if len(payload) != length or zlib.crc32(payload) != crc:
            damaged = True
            continue
        if best is None or sequence > best[1]:
            best = (payload, sequence)
    if best is None:
        if damaged:
            raise StoreCorruptError(f"{path}: damaged attributes: both commit records in the "
                                    f"userblock fail their checksum")
        raise NotAStoreError(f"{path} is not a tokstore store (empty userblock)")
    try:
        raw = json.loads(best[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{path}: damaged attributes: {exc}") from None
    return Record.from_dict(raw, path), best[1]


# ---- clearing a killed writer's superblock flags -------------------------------------------
SUPERBLOCK = struct.Struct("<8sBBBBQQQQI")  # v2/v3: sig, version, sizes, flags, 4 addresses, crc


def _clear_stale_write_flags(fd: int, position: int, path: str):
    """We hold the writer lock, so 'open for write' flags are left over from a dead writer."""
    raw = os.pread(fd, SUPERBLOCK.size, position)
    sig, version, offsets, lengths, flags, base, extension, eof, root, crc = SUPERBLOCK.unpack(raw)
    if version < 2 or offsets != 8:
        raise StoreCorruptError(f"{path}: unexpected HDF5 superblock version {version}")
    if lookup3(raw[:-4]) != crc:
        raise StoreCorruptError(f"{path}: HDF5 superblock checksum mismatch")
    if flags == 0:
        return
    eof = max(eof, os.fstat(fd).st_size)
    body = SUPERBLOCK.pack(sig, version, offsets, lengths, 0, base, extension, eof, root, 0)[:-4]
    os.pwrite(fd, body + struct.pack("<I", lookup3(body)), position)


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, the checksum of HDF5 superblocks v2/v3."""
    mask = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & mask

    a = b = c = (0xDEADBEEF + len(data) + initval) & mask
    words = data + bytes(-len(data) % 12)
    blocks = max(0, -(-len(data) // 12) - 1)
    for i in range(0, blocks * 12, 12):
        a = (a + int.from_bytes(words[i:i + 4], "little")) & mask
        b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & mask
        c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask    # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask    # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask    # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask   # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask   # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask    # noqa: E702
    if not data:
        return c
    i = blocks * 12
    a = (a + int.from_bytes(words[i:i + 4], "little")) & mask
    b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & mask
    c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & mask
    c ^= b; c = (c - rot(b, 14)) & mask   # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & mask   # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask   # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask   # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask    # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask   # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask   # noqa: E702
    return c
