"""Name lookup without a dict of names: a bisect over the sorted name hashes, bytes compared."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tokstore import TokenStore
from tokstore.store.errors import NameNotFoundError
from tokstore.store.reader import StoreReader


def make(path, names):
    with TokenStore.create(path, 512, chunk_bytes=256) as store:
        store.append(names, [np.arange(3)] * len(names), [["x\n"]] * len(names))
        store.commit()


NAMES = [f"set{k % 5}/motion {k:05d}" + ("\u00e9\u4e2d" if k % 9 == 0 else "") for k in range(3000)]


@pytest.mark.parametrize("file", ["c.zarr", "c.h5"])
def test_every_name_is_found_and_absent_ones_are_not(tmp_path, file):
    make(tmp_path / file, NAMES)
    with TokenStore.open(tmp_path / file) as store:
        order = np.random.default_rng(0).permutation(len(NAMES))
        assert [store.index_of(NAMES[i]) for i in order] == order.tolist()
        for absent in ["set0/motion 00000x", "", "set0/motion 0000", "\udcff", "set1/motion 00001 "]:
            with pytest.raises(NameNotFoundError):
                store.index_of(absent)
            assert absent not in store
        assert store[NAMES[2999]].index == 2999
        with pytest.raises(KeyError):
            store.index_of(123)


def test_colliding_hashes_are_told_apart_by_the_name_bytes(tmp_path, monkeypatch):
    """Every name hashed alike (stored hashes and the lookup's): the bytes decide."""
    make(tmp_path / "c.zarr", NAMES[:200])

    class Constant:
        def __init__(self, data, digest_size):
            pass

        def digest(self):
            return (12345).to_bytes(8, "little")

    monkeypatch.setattr("tokstore.store.reader.blake2b", Constant)
    monkeypatch.setattr(StoreReader, "name_hashes",
                        lambda self: np.full(self.n, 12345, dtype="<u8"))
    with TokenStore.open(tmp_path / "c.zarr") as store:
        assert [store.index_of(name) for name in NAMES[:200]] == list(range(200))
        with pytest.raises(NameNotFoundError):
            store.index_of("not in the store")


def test_lookup_hash_is_the_stored_hash(tmp_path):
    make(tmp_path / "c.zarr", NAMES[:50])
    with TokenStore.open(tmp_path / "c.zarr") as store:
        assert store.index_of(NAMES[7]) == 7
    digest = hashlib.blake2b(NAMES[7].encode(), digest_size=8).digest()
    from tokstore.store.format import name_hashes
    assert int(name_hashes([NAMES[7].encode()])[0]) == int.from_bytes(digest, "little")


def test_empty_and_single_sample_stores(tmp_path):
    make(tmp_path / "one.zarr", ["only"])
    with TokenStore.open(tmp_path / "one.zarr") as store:
        assert store.index_of("only") == 0
        assert "other" not in store
    with TokenStore.create(tmp_path / "none.zarr", 512) as store:
        store.commit()
    with TokenStore.open(tmp_path / "none.zarr") as store:
        assert "x" not in store
