"""A local zarr store in the plain layout is written without zarr-python (store/zarr_plain.py):
the files must be byte for byte those zarr-python writes, through every kind of write a store
makes (creation, growing, partial and whole chunks, the counts slots, a resume that cuts uncommitted
values back), and zarr-python must read them; other layouts still go through zarr-python."""
from __future__ import annotations

import json

import numpy as np
import pytest
from store_samples import CODEBOOK, batch

from tokstore import TokenStore
from tokstore.store import zarr_container
from tokstore.store.errors import StoreCorruptError
from tokstore.store.format import ARRAYS
from tokstore.store.zarr_plain import PlainArray, plain_layout


def created_through_zarr(self, arrays):
    """ZarrContainer._create_local as it was: the group and arrays made by zarr-python."""
    self._create_through_zarr(arrays, overwrite=False)


def files(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != zarr_container.LOCK_FILE}


def write_history(path, chunk_bytes):
    """Create, commit twice, write past the commit and stop (a kill), resume, commit again."""
    with TokenStore.create(path, CODEBOOK, chunk_bytes=chunk_bytes, meta={"m": 1}) as store:
        store.append(*batch(0, 7))
        store.commit()
        store.append(*batch(7, 30))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(30, 45))
    store._writer.flush()  # on disk past the commit point, never committed
    store._close(commit=False)
    with TokenStore.open(path, mode="a") as store:  # cuts the uncommitted values back
        store.append(*batch(30, 41))
        store.update_meta({"m": 2})


@pytest.mark.parametrize("chunk_bytes", [64, 4096])
def test_the_files_are_those_zarr_python_writes(tmp_path, monkeypatch, chunk_bytes):
    ours = tmp_path / "ours.zarr"
    write_history(ours, chunk_bytes)
    with monkeypatch.context() as patched:  # creation and every write through zarr-python
        patched.setattr(zarr_container.ZarrContainer, "_plain_array", lambda self, name: None)
        patched.setattr(zarr_container.ZarrContainer, "_create_local",
                        created_through_zarr)
        theirs = tmp_path / "theirs.zarr"
        write_history(theirs, chunk_bytes)
    assert files(ours) == files(theirs)
    assert not [p for p in ours.rglob("*") if p.name.endswith(".partial")]
    with TokenStore.open(ours) as store:
        assert len(store) == 41 and store.check() == []
        assert [store.codes(i).tolist() for i in range(41)] == [c.tolist() for c in
                                                                batch(0, 41)[1]]
        lengths = store._record.array_lengths
    import zarr  # in the tests that use it: other test processes need not load it

    group = zarr.open_group(str(ours), mode="r")
    for name in ARRAYS:
        if name in lengths:
            read = group[name][:lengths[name]]
            with TokenStore.open(ours) as store:
                assert np.array_equal(read, store._read().array(name).read_all()), name


@pytest.mark.parametrize("code_dtype", ["uint16", "int32", "int64"])
def test_a_new_store_is_what_zarr_python_creates(tmp_path, monkeypatch, code_dtype):
    """Each code dtype's new store: the group's and every array's zarr.json (shapes, dtypes,
    codecs, chunk grids) and the first commit's files are the bytes zarr-python writes."""
    def create(path):
        TokenStore.create(path, CODEBOOK, code_dtype=code_dtype, chunk_bytes=4096).close()
        return files(path)

    ours = create(tmp_path / "ours.zarr")
    monkeypatch.setattr(zarr_container.ZarrContainer, "_create_local",
                        created_through_zarr)
    assert ours == create(tmp_path / "theirs.zarr")
    assert json.loads(ours["codes/zarr.json"])["data_type"] == code_dtype


def test_other_layouts_and_damaged_chunks(tmp_path):
    """A compressed array is not the plain layout (zarr-python writes it); a chunk file of the
    wrong size under committed values is an error naming it, not overwritten with zeros."""
    import zarr

    compressed = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(4,), chunks=(2,),
                                   dtype="int64", fill_value=0)
    assert plain_layout(json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())) is None
    assert PlainArray.open(tmp_path / "c.zarr") is None
    del compressed
    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=64) as store:
        store.append(*batch(0, 3))
    with TokenStore.open(path) as store:
        lengths = store._record.array_lengths
    partial = []  # arrays whose last chunk the next append fills further
    for name, length in lengths.items():
        array = PlainArray.open(path / name)
        if name != "counts" and length % array.chunk_len:
            partial.append(array.chunk_path(length // array.chunk_len))
    chunk = partial[0]
    chunk.write_bytes(chunk.read_bytes()[:1])
    with pytest.raises(StoreCorruptError, match=str(chunk)):
        with TokenStore.open(path, mode="a") as store:
            store.append(*batch(3, 4))


def _makes_holes(folder) -> bool:
    """Whether this file system leaves the zeros an extension adds unwritten (a hole)."""
    probe = folder / "probe"
    with open(probe, "wb") as f:
        f.truncate(1 << 20)
    holes = getattr(probe.stat(), "st_blocks", None) is not None and probe.stat().st_blocks < 64
    probe.unlink()
    return holes


def test_a_chunk_file_costs_the_bytes_of_its_values_not_its_size(tmp_path):
    """A small store's chunk files are full-size (zeros past the values, as zarr-python writes
    them) but the zeros are a hole: each commit rewrote ~512 KiB per array (~80 ms of a small
    build's 150 ms of store writes went to the kernel). A rewrite at the start of a chunk keeps
    the values after it, and a value written past the end reads back as written."""
    if not _makes_holes(tmp_path):
        pytest.skip("this file system writes the zeros of an extension")
    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK) as store:  # the default 512 KiB chunks
        for start in range(0, 40, 8):
            store.append(*batch(start, start + 8))
            store.commit()
    chunks = [p for p in path.rglob("c/*") if p.is_file()]
    codes = [p for p in chunks if p.parent.parent.name == "codes"]
    assert codes and all(p.stat().st_size == 1 << 19 for p in codes)
    assert sum(p.stat().st_blocks * 512 for p in chunks) < 64 * 4096 * 2
    with TokenStore.open(path) as store:
        assert [store.codes(i).tolist() for i in range(40)] == [c.tolist()
                                                                for c in batch(0, 40)[1]]
        assert store.check() == []
    array = PlainArray.open(path / "codes")
    before = np.frombuffer((path / "codes" / "c" / "0").read_bytes(), array.dtype).copy()
    array.write(0, np.array([7, 8], array.dtype))  # values after the written ones are kept
    array.write(array.shape + 3, np.array([9], array.dtype))  # a gap of zeros, then a value
    after = np.frombuffer((path / "codes" / "c" / "0").read_bytes(), array.dtype)
    expected = before.copy()
    expected[:2] = [7, 8]
    expected[array.shape - 1] = 9
    assert np.array_equal(after, expected)


def test_a_fifo_in_a_chunk_files_place_is_damage_to_the_writer_too(tmp_path):
    """The reader refuses a FIFO where a chunk file should be (open_chunk, non-blocking); the
    writer, reading back the values it keeps, opened it blocking and waited for a writer that
    never came (a resume or append hung for ever)."""
    import os
    import subprocess
    import sys

    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK, chunk_bytes=4096) as store:
        store.append(*batch(0, 5))
    array = PlainArray.open(path / "codes")
    chunk = array.chunk_path((array.shape - 1) // array.chunk_len)
    chunk.unlink()
    os.mkfifo(chunk)
    script = ("import sys; from store_samples import batch; from tokstore import TokenStore\n"
              "try:\n"
              "    with TokenStore.open(sys.argv[1], mode='a') as s:\n"
              "        s.append(*batch(5, 6))\n"
              "except Exception as exc:\n"
              "    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(__file__),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.startswith("StoreCorruptError") and str(chunk) in done.stdout, done


def test_info_says_the_disk_a_store_takes_not_its_files_lengths(tmp_path):
    """`info`'s size on disk added up file lengths: a small store's chunk files, holes for the
    most part, counted at 512 KiB each (4.5 MiB reported for 188 KiB used)."""
    import os

    from typer.testing import CliRunner

    import cli

    if not _makes_holes(tmp_path):
        pytest.skip("this file system writes the zeros of an extension")
    path = tmp_path / "s.zarr"
    with TokenStore.create(path, CODEBOOK) as store:
        store.append(*batch(0, 10))
    found = json.loads(CliRunner().invoke(cli.app, ["info", str(path), "--json"]).output)
    files = [p for p in path.rglob("*") if p.is_file()]
    assert found["size_bytes"] == sum(p.stat().st_blocks * 512 for p in files)
    assert found["size_bytes"] < sum(p.stat().st_size for p in files) / 4
    assert os.path.getsize(path / "codes" / "c" / "0") == 1 << 19
