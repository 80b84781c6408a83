"""Reads the store cannot make the fast way warn once (StoreFallbackWarning) and stay correct:
a compressed copy (zarr and HDF5) read through the library, a damaged counts slot recounted."""
from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
from store_samples import CODEBOOK, batch

from tokstore import TokenStore
from tokstore.store import StoreFallbackWarning, hdf5_container


def build(path, backend="zarr"):
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=4096) as store:
        store.append(*batch(0, 60))
        store.commit()
        store.append(*batch(60, 120))
    return path


def contents(store):
    return [(s.name, s.codes.tolist(), s.texts) for s in store], store.counts.tolist()


def compressed_zarr_copy(source, target):
    import zarr  # only here: a test process that runs none of these need not load it

    old, new = zarr.open_group(str(source), mode="r"), zarr.open_group(str(target), mode="w")
    for name, array in old.arrays():
        copy = new.create_array(name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                                compressors=[zarr.codecs.GzipCodec(level=1)], fill_value=0)
        copy[:] = array[:]
    new.attrs.update(old.attrs.asdict())
    return target


def compressed_hdf5_copy(source, target):
    with h5py.File(source, "r") as old, h5py.File(target, "w", libver="latest",
                                                   userblock_size=hdf5_container.USERBLOCK) as new:
        for name, dataset in old.items():
            new.create_dataset(name, data=dataset[()], chunks=dataset.chunks, maxshape=(None,),
                               compression="gzip")
    with open(source, "rb") as f:
        userblock = f.read(hdf5_container.USERBLOCK)
    with open(target, "r+b") as f:
        f.write(userblock)
    return target


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_compressed_copy_warns_once_and_reads_the_same(tmp_path, backend):
    source = build(tmp_path / ("s.h5" if backend == "hdf5" else "s.zarr"), backend)
    make_copy = compressed_hdf5_copy if backend == "hdf5" else compressed_zarr_copy
    copy = make_copy(source, tmp_path / ("c.h5" if backend == "hdf5" else "c.zarr"))
    with TokenStore.open(source) as store:
        want = contents(store)
    with pytest.warns(StoreFallbackWarning, match="c\\.(zarr|h5).*compressed|not in the plain"):
        with TokenStore.open(copy) as store:
            assert contents(store) == want
            assert store.check() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process and store
        with TokenStore.open(copy) as store:
            assert contents(store) == want


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_damaged_counts_slot_warns_and_is_recounted(tmp_path, backend):
    path = build(tmp_path / ("s.h5" if backend == "hdf5" else "s.zarr"), backend)
    with TokenStore.open(path) as store:
        want, slot = store.counts.copy(), store._record.counts_slot
        if backend == "hdf5":
            start = store._record.counts_span(slot)[0] * 8
            position = store._container._dataset("counts").id.get_offset()
            if position is None:  # chunked: the slot is its own chunk
                position, _ = store._container.chunk_location("counts", slot)
                start = 0
    if backend == "zarr":
        chunk = path / "counts" / "c" / str(slot)
        data = bytearray(chunk.read_bytes())
        data[8] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:
        with open(path, "r+b") as f:
            f.seek(position + start + 8)
            byte = f.read(1)
            f.seek(position + start + 8)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(StoreFallbackWarning, match="counts fail their checksum"):
        with TokenStore.open(path) as store:
            assert np.array_equal(store.counts, want)
            assert any("counts: checksum mismatch" in p for p in store.check())
