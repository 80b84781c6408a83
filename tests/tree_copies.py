"""Copies of the trees tests make once and reuse (a dataset, a built store), quicker than shutil's
and as sparse as the original: a store's chunk files are mostly a hole (store/zarr_plain.py), which
a plain copy writes out as zeros (~5 MB for each small store)."""
from __future__ import annotations

import errno
import os
import shutil

SPARSE_ABOVE = 1 << 16  # smaller files are copied whole (looking for holes costs more)


def copy_file(source, target) -> None:
    """`source`'s bytes and mode into a new `target`, its holes left holes where the file system
    finds them (SEEK_DATA/SEEK_HOLE; elsewhere every byte is copied)."""
    fd_in = os.open(source, os.O_RDONLY)
    try:
        size = os.fstat(fd_in).st_size
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for start, stop in _data_extents(fd_in, size):
                os.lseek(fd_in, start, os.SEEK_SET)
                os.lseek(fd_out, start, os.SEEK_SET)
                while start < stop:
                    chunk = os.read(fd_in, min(stop - start, 1 << 20))
                    if not chunk:
                        break
                    written = memoryview(chunk)
                    while written:
                        written = written[os.write(fd_out, written):]
                    start += len(chunk)
            os.ftruncate(fd_out, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    shutil.copymode(source, target)


def _data_extents(fd: int, size: int):
    """(start, stop) of each stretch of `fd` that holds data: the whole file where it is small or
    the file system cannot say."""
    if size <= SPARSE_ABOVE or not hasattr(os, "SEEK_DATA"):
        yield 0, size
        return
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                return
            if position == 0:  # SEEK_DATA not supported here
                yield 0, size
                return
            raise
        stop = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, stop
        position = stop


def copy_tree(source, target) -> None:
    """The files and folders under `source` into `target` (made or merged into), symlinks as
    symlinks."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True, copy_function=copy_file)
