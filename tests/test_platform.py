"""The portable path of store/oscalls.py, forced on Linux: TOKSTORE_PORTABLE=1 turns off flock,
libc mmap, pread/pwrite and /proc, as on Windows (no fcntl) or macOS (no MAP_FIXED maps)."""
from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
from pathlib import Path

import preforked
import pytest

from build_helpers import CLI, subprocess_env
from store_samples import CODEBOOK, batch
from tokstore import TokenStore
from tokstore.store import StoreLockedError
from tokstore.store import oscalls


def store_path(tmp_path, backend):
    return tmp_path / ("codes.zarr" if backend == "zarr" else "codes.h5")


def portable_env(folder, block=("fcntl",)) -> dict:
    """A child environment with the fallbacks forced and `block` made unimportable (by a
    sitecustomize in `folder`: the session's, so that every child with the same environment
    forks from one preforked server)."""
    site = folder / "site-{}".format("-".join(block))
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in block))
    env = subprocess_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    env["TOKSTORE_PORTABLE"] = "1"
    return env


def run(args, env, cwd=None):
    """From the torch-free server: the commands here need no torch, and the loader's child
    imports it itself (one server for the portable environment, not two)."""
    result = preforked.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                           preload="store")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_lock_without_flock_refuses_a_second_writer(tmp_path, backend, monkeypatch):
    """Without flock the lock is an O_EXCL file: a second writer is refused, the file goes
    with the writer's close, and a killed writer's file is named in the refusal."""
    monkeypatch.setattr(oscalls, "HAVE_FLOCK", False)
    path = store_path(tmp_path, backend)
    lock_file = (path / oscalls.EXCLUSIVE_FILE if backend == "zarr"
                 else path.with_name(path.name + oscalls.EXCLUSIVE_SUFFIX))
    with TokenStore.create(path, CODEBOOK, backend=backend) as store:
        store.append(*batch(0, 8))
        store.commit()
        assert lock_file.is_file()  # moved with the new store into place
        with pytest.raises(StoreLockedError, match="open for writing by another process"):
            TokenStore.open(path, mode="a")
    assert not lock_file.exists()
    assert not list(tmp_path.glob(f"*{oscalls.EXCLUSIVE_SUFFIX}"))
    with TokenStore.open(path, mode="a") as store:
        store.append(*batch(8, 16))
    lock_file.write_text("12345\n")  # what a killed writer leaves
    with pytest.raises(StoreLockedError, match=f"pid 12345.*delete {lock_file}"):
        TokenStore.open(path, mode="a")
    with TokenStore.open(path) as store:  # readers take no lock
        assert len(store) == 16
    lock_file.unlink()
    with TokenStore.open(path, mode="a") as store:
        store.append(*batch(16, 20))
    with TokenStore.open(path) as store:
        assert len(store) == 20


def test_lock_without_flock_stops_a_writer_whose_lock_file_was_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(oscalls, "HAVE_FLOCK", False)
    path = store_path(tmp_path, "zarr")
    with TokenStore.create(path, CODEBOOK) as store:
        store.append(*batch(0, 8))
    store = TokenStore.open(path, mode="a")
    store.append(*batch(8, 16))
    (path / oscalls.EXCLUSIVE_FILE).unlink()
    with pytest.raises(StoreLockedError, match="removed or replaced"):
        store.commit()
    store._close(commit=False)
    with TokenStore.open(path) as store:
        assert len(store) == 8


def test_positioned_io_emulation_matches_pread(tmp_path, monkeypatch):
    file = tmp_path / "f"
    file.write_bytes(bytes(range(256)) * 4)
    fd = os.open(file, os.O_RDWR)
    try:
        native = [oscalls.pread(fd, n, at) for n, at in [(10, 0), (100, 1000), (5, 1024)]]
        monkeypatch.setattr(oscalls, "HAVE_PREAD", False)
        assert [oscalls.pread(fd, n, at) for n, at in [(10, 0), (100, 1000), (5, 1024)]] == native
        oscalls.pwrite_all(fd, b"xyz", 500)
    finally:
        os.close(fd)
    assert file.read_bytes()[498:505] == bytes([242, 243]) + b"xyz" + bytes([247, 248])


CHILD = textwrap.dedent("""
    import sys, warnings
    from collections import Counter
    warnings.simplefilter("always")
    assert sys.modules.get("fcntl", 0) is None  # unimportable here
    import tokstore
    from tokstore import TokenStore
    from tokstore.store import oscalls, StoreLockedError
    from store_samples import CODEBOOK, batch
    assert oscalls.PORTABLE and oscalls.fcntl is None and oscalls.ctypes is None
    assert not (oscalls.HAVE_FLOCK or oscalls.HAVE_PREAD or oscalls.HAVE_LIBC_MMAP)
    directory, loader = sys.argv[1], sys.argv[2] == "loader"

    def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for backend, name in [("zarr", "codes.zarr"), ("hdf5", "codes.h5")]:
                path = f"{directory}/{name}"
                with TokenStore.create(path, CODEBOOK, backend=backend,
                                       chunk_bytes=4096) as store:
                    store.append(*batch(0, 30))
                    store.commit()
                    try:
                        TokenStore.open(path, mode="a")
                        raise SystemExit("a second writer got in")
                    except StoreLockedError:
                        pass
                    store.append(*batch(30, 60))
                with TokenStore.open(path, mode="a") as store:
                    store.append(*batch(60, 80))
                expected = [batch(i, i + 1) for i in range(80)]
                for _ in range(2):  # the second pass reads the same maps again
                    with TokenStore.open(path) as store:
                        assert store.names == [e[0][0] for e in expected]
                        for i, e in enumerate(expected):
                            assert store.codes(i).tolist() == list(e[1][0]), (backend, i)
                        assert len(store.lengths) == 80
        kinds = Counter(str(w.message).split(":")[1] for w in caught
                        if issubclass(w.category, oscalls.PlatformFallbackWarning))
        print(dict(kinds))
        assert set(kinds.values()) == {1}, kinds  # each kind once per process
        assert len(kinds) == 3, kinds  # python maps, copied offsets, HDF5 read attempts
        if loader:
            from torch.utils.data import ConcatDataset, DataLoader
            from tokstore.torch import CodeDataset
            # both stores behind one loader: its one spawned worker reads both backends (one
            # interpreter imports torch, not one per store). Readers take no lock, so a second
            # worker would add nothing the portable path does differently; interleaving batches
            # across workers is test_torch_loader's (forked, forkserver) check
            stores = [CodeDataset(f"{directory}/{name}") for name in ("codes.zarr", "codes.h5")]
            expected = [store[i] for store in stores for i in range(len(store))]  # no workers
            assert all(len(store) > 40 for store in stores)
            spawned = DataLoader(ConcatDataset(stores), batch_size=7, collate_fn=list,
                                 num_workers=1, multiprocessing_context="spawn")
            assert len(spawned) > 2 * 2  # the worker gets several batches of each store
            items = [it for b in spawned for it in b]
            assert [it.name for it in items] == [it.name for it in expected]
            assert all(it.codes.tolist() == e.codes.tolist() for it, e in zip(items, expected))
            print("loader ok")

    if __name__ == "__main__":
        main()
""")


def test_store_and_spawned_loader_without_fcntl_or_native_calls(tmp_path, tmp_path_factory):
    """Both backends written and read, and a spawn DataLoader (macOS' and Windows' default),
    in a process where fcntl cannot be imported and every fallback is forced; each fallback
    that costs something warns once."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = portable_env(tmp_path_factory.getbasetemp())
    env["PYTHONPATH"] += f"{os.pathsep}{Path(__file__).parent}"  # store_samples
    out = run([sys.executable, str(script), str(tmp_path), "loader"], env).stdout
    assert "loader ok" in out


def test_import_without_fcntl_and_ctypes(tmp_path_factory):
    """`import tokstore` (and the CLI module) where neither fcntl nor ctypes can be imported.
    The commands themselves need torch, which needs ctypes: they are run below without fcntl."""
    run([sys.executable, "-c", "import sys; assert sys.modules['ctypes'] is None; "
                               "import tokstore, tokstore.store, cli"],
        portable_env(tmp_path_factory.getbasetemp(), block=("fcntl", "ctypes")))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_read_commands_without_fcntl(tmp_path, tmp_path_factory, backend):
    """info, show, ls and export-pickle where fcntl cannot be imported and every fallback is
    forced (the store is written here, normally)."""
    path = store_path(tmp_path, backend)
    names, codes, captions = batch(0, 12)
    with TokenStore.create(path, CODEBOOK, backend=backend,
                           meta={"legacy_code_dtype": "int32"}) as store:
        store.append(names, codes, captions)
    env = portable_env(tmp_path_factory.getbasetemp())
    info = json.loads(run([*CLI, "info", str(path), "--json"], env).stdout)
    assert info["samples"] == 12 and info["backend"] == backend
    shown = json.loads(run([*CLI, "show", str(path), names[3], "--json"], env).stdout)
    assert shown["name"] == names[3] and list(shown["codes"]) == list(codes[3])
    listed = run([*CLI, "ls", str(path)], env).stdout
    assert [line.split("\t")[1] for line in listed.splitlines()[:12]] == names
    out = tmp_path / "all.pkl"
    run([*CLI, "export-pickle", str(path), str(out)], env)
    with open(out, "rb") as f:
        exported = pickle.load(f)
    assert [list(exported["code_data"][n].ravel()) for n in names] == [list(c) for c in codes]


@pytest.mark.skipif(not oscalls.HAVE_LIBC_MMAP, reason="the native maps are Linux's")
def test_native_maps_warn_only_for_chunks_off_the_page_size(tmp_path, monkeypatch):
    """On Linux with page-sized chunks nothing falls back; chunks off the page size make the
    offset arrays private copies, which is said once."""
    import warnings
    monkeypatch.setattr(oscalls, "_WARNED", set())
    for chunk_bytes, name in [(1 << 19, "big.zarr"), (64, "small.zarr"), (64, "again.zarr")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with TokenStore.create(tmp_path / name, CODEBOOK, chunk_bytes=chunk_bytes) as store:
                store.append(*batch(0, 40))
            with TokenStore.open(tmp_path / name) as store:
                assert store.codes(39).tolist() == list(batch(39, 40)[1][0])
                assert len(store.lengths) == 40  # the whole offset array
        fallbacks = [str(w.message) for w in caught
                     if issubclass(w.category, oscalls.PlatformFallbackWarning)]
        if name == "small.zarr":
            assert len(fallbacks) == 1 and "not a multiple of the page size" in fallbacks[0]
        else:
            assert fallbacks == [], fallbacks


def test_disk_bytes_are_blocks_where_counted_else_the_length():
    from types import SimpleNamespace
    assert oscalls.disk_bytes(SimpleNamespace(st_size=5000, st_blocks=16)) == 8192
    assert oscalls.disk_bytes(SimpleNamespace(st_size=5000)) == 5000  # Windows: no st_blocks
