"""The writer's duplicate-name check: names already committed, appended since the last commit
(buffered or already flushed), and names whose hashes collide with another's."""
from __future__ import annotations

import numpy as np
import pytest

from tokstore import TokenStore
from tokstore.store import DuplicateNameError
from tokstore.store import writer as store_writer


def add(store, names):
    store.append(names, [np.arange(3)] * len(names), [["a caption\n"]] * len(names))


@pytest.mark.parametrize("colliding", [False, True])
@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_duplicates_are_refused_and_collisions_are_not(tmp_path, monkeypatch, backend, colliding):
    if colliding:  # every name hashes alike: only the names themselves tell them apart
        monkeypatch.setattr(store_writer, "name_hashes",
                            lambda encoded: np.full(len(encoded), 7, dtype="<u8"))
    monkeypatch.setattr(store_writer, "FLUSH_BYTES", 1)  # every append is written out at once
    monkeypatch.setattr(store_writer, "RECENT_HASHES", 5)  # the two sorted arrays merge often
    path = tmp_path / ("s.h5" if backend == "hdf5" else "s.zarr")
    with TokenStore.create(path, 10, backend=backend) as store:
        add(store, [f"a{i}" for i in range(40)])
        store.commit()
        add(store, [f"b{i}" for i in range(40)])  # flushed, not committed
        with pytest.raises(DuplicateNameError, match=r"'a17' is already .* \(sample 17\)"):
            add(store, ["new", "a17"])
        with pytest.raises(DuplicateNameError, match=r"'b3' is already in the store \(sample 43\)"):
            add(store, ["b3"])
        add(store, ["new", "c"])
        with pytest.raises(DuplicateNameError, match=r"'new' is already .* \(sample 80\)"):
            add(store, ["new"])
        assert len(store) == 40
    with TokenStore.open(path, "a") as store:
        assert len(store) == 82
        with pytest.raises(DuplicateNameError, match=r"\(sample 81\)"):
            add(store, ["c"])
        add(store, ["d"])
    with TokenStore.open(path) as store:
        assert store.names == [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)] + [
            "new", "c", "d"]
