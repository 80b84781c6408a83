"""Stores laid out other than tokstore writes them (a repacked HDF5 copy with contiguous datasets)
still read correctly, and their offset arrays are views of the file's map, shared by every process
reading the store, not a private copy in each."""
from __future__ import annotations


import h5py
import numpy as np
import pytest
from store_samples import CODEBOOK, batch

from tokstore import TokenStore
from tokstore.store import hdf5_container
from tokstore.store.format import OFFSET_ARRAYS


def build(path, backend, n=200, chunk_bytes=4096):
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=chunk_bytes) as store:
        for k in range(4):
            store.append(*batch(k * n // 4, (k + 1) * n // 4))
            store.commit()
    return path


def contiguous_copy(source, target):
    """The store's HDF5 file rewritten with every dataset contiguous (what h5repack -l CONTI
    makes), its userblock (the commit records) copied over."""
    with h5py.File(source, "r") as old, h5py.File(target, "w", libver="latest",
                                                   userblock_size=hdf5_container.USERBLOCK) as new:
        for name, dataset in old.items():
            data = dataset[()]
            new.create_dataset(name, data=data) if data.size else new.create_dataset(
                name, shape=(0,), dtype=dataset.dtype)
            assert new[name].chunks is None
    with open(source, "rb") as f:
        userblock = f.read(hdf5_container.USERBLOCK)
    with open(target, "r+b") as f:
        f.write(userblock)
    return target


def contents(store):
    return [(s.name, s.codes.tolist(), s.texts) for s in store]


def test_contiguous_hdf5_copy_reads_the_same_through_one_map(tmp_path):
    source = build(tmp_path / "s.h5", "hdf5")
    copy = contiguous_copy(source, tmp_path / "c.h5")
    with TokenStore.open(source) as want, TokenStore.open(copy) as got:
        assert contents(got) == contents(want)
        assert got.check() == []
        assert np.array_equal(got.captioned(), want.captioned())
        for name in OFFSET_ARRAYS:
            values = got._reader.whole_array(name)
            assert not values.flags.owndata  # a view of the file's map, not a copy
            assert np.array_equal(values, want._reader.whole_array(name))
        assert got[5].codes.base is not None


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_one_chunk_arrays_are_views(tmp_path, backend):
    """Arrays within one chunk are handed out as the chunk's view (no concatenated copy)."""
    path = build(tmp_path / ("s.h5" if backend == "hdf5" else "s.zarr"), backend, n=20,
                 chunk_bytes=1 << 19)
    with TokenStore.open(path) as store:
        for name in OFFSET_ARRAYS:
            assert not store._reader.whole_array(name).flags.owndata
