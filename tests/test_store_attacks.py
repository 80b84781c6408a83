"""An unlucky or hostile user against the store: chunk files that are not files, damaged array
metadata, a damaged HDF5 chunk index. Each must end in one line naming the store, within
seconds (a FIFO that would block is caught by the subprocess timeout), never a traceback."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess

import preforked
import pytest
from build_helpers import CLI, REPO, build_args, subprocess_env, tiny_setup
from store_samples import batch
from test_store_damage import assert_one_line_error, build, cli, finish, start_cli

from tokstore import TokenStore
from tokstore.store import StoreCorruptError, StoreError, StoreLockedError, StoreWriteError

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



def test_hdf5_build_into_a_full_disk_fails_in_one_line(tmp_path, small_tmpfs):
    """ENOSPC at the very first commit of a new HDF5 store: HDF5 crashed (SIGSEGV) closing a
    dataset whose flush had failed. Now: one line, exit 1, no half-made file left."""
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    store = small_tmpfs / "store.h5"
    result = preforked.run(CLI + build_args(dataset, checkpoint, store), cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and str(store) in lines[0] and "No space left" in lines[0], \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_store_on_a_read_only_mount(small_tmpfs, backend):
    """Reads work on a read-only file system; appending is a StoreWriteError (EROFS) naming the
    store, not a bare OSError (the HDF5 writer's open raised one, a traceback in the CLI)."""
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    path = build(small_tmpfs / ("store.zarr" if backend == "zarr" else "store.h5"), backend, n=40)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    shown = cli("show", path, NAME)
    assert shown.returncode == 0 and NAME in shown.stdout, shown.stderr
    assert cli("verify", path).returncode == 0
    with pytest.raises(StoreWriteError, match=str(path)) as raised:
        with TokenStore.open(path, "a") as store:
            store.append(*batch(40, 41))
            store.commit()
    assert raised.value.errno == errno.EROFS


def test_hdf5_reader_elsewhere_is_not_called_a_writer(tmp_path):
    """An h5py reader with HDF5's file locking holds a shared lock on the file: a writer cannot
    start, and must say a reader holds it (and how to avoid that), not 'open for writing'."""
    h5py = pytest.importorskip("h5py")
    path = build(tmp_path / "store.h5", "hdf5", n=10)
    with h5py.File(path, "r", locking=True):
        with pytest.raises(StoreLockedError, match="HDF5_USE_FILE_LOCKING") as raised:
            TokenStore.open(path, "a")
    assert "open for writing" not in str(raised.value) and str(path) in str(raised.value)
    TokenStore.open(path, "a").close()  # free again once the reader is gone


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_store_path_that_is_a_dangling_symlink(tmp_path, suffix):
    """Creating through a symlink to nothing was 'another process created it meanwhile' (HDF5)
    or 'Not a directory' (zarr); now it says what is there, and leaves nothing behind."""
    path = tmp_path / f"store{suffix}"
    path.symlink_to(tmp_path / "elsewhere" / f"gone{suffix}")
    with pytest.raises(StoreError, match=f"{path} is a symbolic link to a missing"):
        build(path, "zarr" if suffix == ".zarr" else "hdf5", n=3)
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_failing_close_after_an_error_leaves_the_first_error(tmp_path, backend):
    path = tmp_path / f"s.{'zarr' if backend == 'zarr' else 'h5'}"
    TokenStore.create(path, codebook_size=16, backend=backend).close()
    store = TokenStore.open(path, mode="a")
    container_close = store._container.close

    def close():
        container_close()
        raise OSError(errno.EIO, "injected close failure")

    store._container.close = close
    with pytest.raises(KeyError) as raised:
        with store:
            raise KeyError("the first error")
    assert "injected close failure" in "".join(raised.value.__notes__)
    with TokenStore.open(path) as again:  # still the last commit
        assert len(again) == 0


@pytest.mark.parametrize("size, chunk_bytes, says", [
    (2**24 + 1, 1 << 19, "codebook_size must be an int in [1, 16777216]"),  # counts: 8 B a code
    (2**31 - 3, 1 << 19, "codebook_size must be an int in [1, 16777216]"),  # was a 16 GB zeros
    (0, 1 << 19, "codebook_size must be an int in [1, 16777216], not 0"),
    (True, 1 << 19, "codebook_size must be an int in [1, 16777216], not True"),
    (16, 2**26 + 1, "chunk_bytes must be an int in [1, 67108864]"),  # a file that size per array
    (16, 0, "chunk_bytes must be an int in [1, 67108864], not 0"),
    (16, 4.0, "chunk_bytes must be an int in [1, 67108864], not 4.0"),
])
def test_create_refuses_sizes_it_cannot_hold_before_writing_anything(tmp_path, size, chunk_bytes,
                                                                      says):
    for name in ("s.zarr", "s.h5"):
        with pytest.raises(StoreError, match=re.escape(says)):
            TokenStore.create(tmp_path / name, size, chunk_bytes=chunk_bytes)
        assert not (tmp_path / name).exists()
