"""Reading the committed prefix of one chunked 1-D array, around the container's per-call cost.

A container hands over a `load(k)` function returning chunk k as a numpy array: a zero-copy view
of a memory map where the chunk's bytes sit raw in a file (local zarr chunk files, HDF5 chunks at
their byte offset), else a copy read through the library. Mapped chunks are kept, the last
MAPPED_CHUNKS loaded of them (a view costs nothing until touched, but every map is one of the
kernel's vm.max_map_count, 65,530 by default, for the whole process); copies are kept in a small
most-recently-used cache.

A container may also hand over `map_whole()`: all chunk files of the committed prefix mapped
side by side into one address range (see `map_side_by_side`), so that `read_all()` of a whole
offset array is a view of the page cache, shared by every process reading the store (DataLoader
workers, DDP ranks), rather than a private concatenated copy in each.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from .errors import StoreCorruptError
from .oscalls import map_file, map_side_by_side  # noqa: F401 (the containers' maps, made there)

MAPPED_CHUNKS = 2048  # per array: 1 GiB of 512 KiB chunks; a dozen arrays stay far below the limit


class ChunkedArray:
    def __init__(self, name: str, dtype: np.dtype, length: int, chunk_len: int,
                 load: Callable[[int], np.ndarray], mapped: bool, cache_chunks: int = 32,
                 map_whole: Callable[[], np.ndarray | None] | None = None):
        self.name, self.dtype, self.length, self.chunk_len = name, np.dtype(dtype), length, chunk_len
        self._load, self._map_whole = load, map_whole
        self._chunks: list[np.ndarray | None] = [None] * (-(-length // chunk_len))
        self._recent: deque[int] = deque()  # the chunks kept, oldest first
        self._mapped = mapped
        self._cache_chunks = cache_chunks
        self._empty = np.zeros(0, self.dtype)
        self._empty.flags.writeable = False

    def chunk(self, k: int) -> np.ndarray:
        chunk = self._chunks[k]
        if chunk is None:
            chunk = self._load(k)
            need = min(self.chunk_len, self.length - k * self.chunk_len)
            if chunk.shape[0] < need:
                raise StoreCorruptError(f"{self.name}: chunk {k} holds {chunk.shape[0]} values, "
                                        f"the commit needs {need}")
            chunk.flags.writeable = False
            self._chunks[k] = chunk
            self._recent.append(k)
            if len(self._recent) > (MAPPED_CHUNKS if self._mapped else self._cache_chunks):
                self._chunks[self._recent.popleft()] = None  # views handed out keep their map
        return chunk

    def read(self, start: int, stop: int) -> np.ndarray:
        """Values [start, stop), read-only: a view when they lie in one chunk, else a copy."""
        if start >= stop:
            return self._empty
        size = self.chunk_len
        k = start // size
        base = k * size
        if stop <= base + size:
            chunk = self._chunks[k]
            if chunk is None:
                chunk = self.chunk(k)
            return chunk[start - base:stop - base]
        last = (stop - 1) // size
        parts = [self.chunk(j)[max(start - j * size, 0):min(stop - j * size, size)]
                 for j in range(k, last + 1)]
        values = np.concatenate(parts)
        values.flags.writeable = False  # like the views: store data is not edited in place
        return values

    def blocks(self):
        """(start, values) for every chunk of the committed prefix, in order."""
        for k in range(len(self._chunks)):
            start = k * self.chunk_len
            yield start, self.chunk(k)[:min(self.chunk_len, self.length - start)]

    def read_all(self) -> np.ndarray:
        """The whole committed prefix, read-only: one shared map where possible, else a copy."""
        if self.length == 0:
            return self._empty
        whole = self._map_whole() if self._map_whole is not None else None
        if whole is not None:
            values = whole.view(self.dtype)[:self.length]
        elif len(self._chunks) == 1:  # one chunk (a contiguous HDF5 dataset): its view
            values = self.chunk(0)[:self.length]
        else:
            values = np.concatenate([values for _, values in self.blocks()])
        values.flags.writeable = False
        return values


# ---- writing: zarr arrays and h5py datasets share the calls used here (shape, chunks, resize,
# slice assignment), so one piece of code serves both containers

def write_growing(array, start: int, values: np.ndarray) -> None:
    """values into array[start:], growing the 1-D array first if it is too short."""
    stop = start + len(values)
    if array.shape[0] < stop:
        array.resize((stop,))
    array[start:stop] = values


def truncate_chunked(array, length: int) -> None:
    """Cut a 1-D array back to `length`, zeroing the rest of its last chunk as a fresh write
    leaves it (so a resumed store ends byte-identical to an uninterrupted one)."""
    size, chunk_len = array.shape[0], array.chunks[0]
    if size <= length:
        return
    chunk_end = min(size, -(-length // chunk_len) * chunk_len)
    if chunk_end > length:
        array[length:chunk_end] = 0
    array.resize((length,))
