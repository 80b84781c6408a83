"""An unlucky or hostile user against the store: chunk files that are not files, damaged array
metadata, a damaged HDF5 chunk index. Each must end in one line naming the store, within
seconds (a FIFO that would block is caught by the subprocess timeout), never a traceback."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from store_samples import batch
from test_store_damage import assert_one_line_error, build, cli, finish, start_cli

from tokstore import TokenStore
from tokstore.store import StoreCorruptError, StoreError

NAME = batch(3, 4)[0][0]


@pytest.mark.parametrize("array", ["codes", "offsets", "names"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_zarr_chunk_that_is_not_a_file(tmp_path, array, kind):
    path = build(tmp_path / "store.zarr", "zarr", n=40)
    chunk = path / array / "c" / "0"
    chunk.unlink()
    os.mkdir(chunk) if kind == "directory" else os.mkfifo(chunk)
    line = assert_one_line_error(finish(start_cli("show", path, NAME), timeout=60), path)
    assert "0" in line and array in line
    with pytest.raises(StoreCorruptError, match=str(path)):
        with TokenStore.open(path) as store:
            store.codes(3), store.names, store.counts


@pytest.mark.parametrize("array", ["names", "text", "offsets"])
def test_zarr_array_of_another_type_names_the_store(tmp_path, array):
    path = build(tmp_path / "store.zarr", "zarr", n=40)
    meta_file = path / array / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["data_type"] = "int8" if meta["data_type"] != "int8" else "uint8"
    meta_file.write_text(json.dumps(meta))
    line = assert_one_line_error(cli("show", path, NAME), path)
    assert array in line


def test_damaged_hdf5_chunk_index_is_a_store_error(tmp_path):
    """A flipped byte in an extensible-array index block: HDF5 reports a checksum error from
    chunk iteration, which must reach the user as a store error, not a RuntimeError."""
    path = build(tmp_path / "store.h5", "hdf5", n=40)
    data = bytearray(path.read_bytes())
    blocks = [m.start() for m in re.finditer(b"EAIB", data)]
    assert blocks
    for at in blocks:
        data[at + 20] ^= 0x40
    path.write_bytes(bytes(data))
    assert_one_line_error(cli("show", path, NAME), path)
    with pytest.raises(StoreError, match=str(path)):
        with TokenStore.open(path) as store:
            store.codes(3), store.names, store.texts(3)

