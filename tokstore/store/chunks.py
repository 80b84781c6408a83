"""Reading the committed prefix of one chunked 1-D array, around the container's per-call cost.

A container hands over a `load(k)` function returning chunk k as a numpy array: a zero-copy view
of a memory map where the chunk's bytes sit raw in a file (local zarr chunk files, HDF5 chunks at
their byte offset), else a copy read through the library. Mapped chunks are all kept (a view
costs nothing until touched); copies are kept in a small most-recently-used cache.
"""
from __future__ import annotations

import mmap
import os
from collections import deque
from typing import Callable

import numpy as np

from .errors import StoreCorruptError


class ChunkedArray:
    def __init__(self, name: str, dtype: np.dtype, length: int, chunk_len: int,
                 load: Callable[[int], np.ndarray], mapped: bool, cache_chunks: int = 32):
        self.name, self.dtype, self.length, self.chunk_len = name, np.dtype(dtype), length, chunk_len
        self.mapped = mapped
        self._load = load
        self._chunks: list[np.ndarray | None] = [None] * (-(-length // chunk_len))
        self._recent: deque[int] | None = None if mapped else deque()
        self._cache_chunks = cache_chunks

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
            if self._recent is not None:
                self._recent.append(k)
                if len(self._recent) > self._cache_chunks:
                    self._chunks[self._recent.popleft()] = None
        return chunk

    def read(self, start: int, stop: int) -> np.ndarray:
        """Values [start, stop): a read-only view when they lie in one chunk, else a copy."""
        if start >= stop:
            return np.zeros(0, self.dtype)
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
        return np.concatenate(parts)

    def blocks(self):
        """(start, values) for every chunk of the committed prefix, in order."""
        for k in range(len(self._chunks)):
            start = k * self.chunk_len
            yield start, self.chunk(k)[:min(self.chunk_len, self.length - start)]

    def read_all(self) -> np.ndarray:
        if self.length == 0:
            return np.zeros(0, self.dtype)
        return np.concatenate([values for _, values in self.blocks()])


def map_file(path: str) -> mmap.mmap | None:
    """A read-only memory map of a whole file (None for an empty file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
