"""Issue 13: the skipped list is unbounded, so it lives in the store's arrays, not in the commit
record (whose HDF5 slot holds 512 KiB): a build skipping thousands of entries must commit, read
back and resume on both backends, and stores written with the list in the record still read."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from build_helpers import build_args, run_cli, tiny_setup
from tokstore import TokenStore
from tokstore.store.errors import StoreCorruptError, StoreError

MISSING = 5000


def _many_missing(tmp_path):
    """A split of a few real entries and MISSING whose motion files do not exist (preflight
    skips those cheaply), each with a long name so the list is far over 512 KiB as JSON."""
    dataset, checkpoint = tiny_setup(tmp_path, n=6)
    ghosts = [f"{dataset.names[0].split('/')[0]}/ghost_{'x' * 60}_{i:05d}" for i in range(MISSING)]
    names = dataset.names[:3] + ghosts + dataset.names[3:]
    dataset.layout.split_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return dataset, checkpoint, ghosts


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_thousands_of_skips_build_read_and_resume(tmp_path, suffix):
    dataset, checkpoint, ghosts = _many_missing(tmp_path)
    split = dataset.layout.split_file
    full = split.read_text()
    split.write_text("".join(f"{n}\n" for n in dataset.names[:3] + ghosts))  # the split grows later
    store = tmp_path / f"s{suffix}"
    result = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    assert f"skipped {2 * MISSING}:" in result.output
    with TokenStore.open(store) as s:
        assert len(s) == 3 and s.check() == []
        skipped = s.meta["skipped"]
        assert s.skipped == skipped
    assert sorted({e["name"] for e in skipped}) == ghosts  # motion and caption file missing
    assert {e["reason"] for e in skipped} == {"missing motion file", "missing caption file"}
    assert len(json.dumps(skipped)) > 512 << 10  # what overflowed the record before

    info = run_cli("info", store)
    assert info.exit_code == 0, info.output
    assert f"skipped:      {len(skipped)}\n" in info.output

    split.write_text(full)
    resumed = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert resumed.exit_code == 0, resumed.output
    again = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))  # complete
    assert again.exit_code == 0 and f"skipped {2 * MISSING}:" in again.output, again.output
    with TokenStore.open(store) as s:
        assert len(s) == 6 and s.check() == [] and s.meta["skipped"] == skipped
        assert s.names == dataset.names and s.meta["build"]["complete"] is True


def _old_format(path, skipped):
    """A store as tokstore before this change wrote it: the skipped list inside the record."""
    with TokenStore.create(path, 16) as s:
        s.append(["a"], [np.arange(3)], [["hi\n"]])
    record = _raw_record(path)
    meta = {**record["meta"], "skipped": skipped}
    record.pop("skipped", None)
    _write_raw_record(path, {**record, "meta": meta})


def _raw_record(path):
    from tokstore.store.format import RECORD_KEY
    if str(path).endswith(".h5"):
        from tokstore.store.hdf5_container import _read_record
        import os
        fd = os.open(path, os.O_RDONLY)
        try:
            return _read_record(fd, str(path))[0].to_dict()
        finally:
            os.close(fd)
    return json.loads((path / "zarr.json").read_text())["attributes"][RECORD_KEY]


def _write_raw_record(path, raw):
    """Write `raw` (a dict) as the newest commit record, with a valid record_crc32."""
    import os
    import zlib

    from tokstore.store.format import RECORD_CHECKSUM, RECORD_KEY, record_checksum
    raw = {k: v for k, v in raw.items() if k != RECORD_CHECKSUM}
    raw[RECORD_CHECKSUM] = record_checksum(raw)
    if str(path).endswith(".h5"):
        from tokstore.store import hdf5_container as h
        fd = os.open(path, os.O_RDWR)
        try:
            sequences = []
            for slot in (0, 1):
                magic, seq, _, _ = h.SLOT_HEADER.unpack(os.pread(fd, h.SLOT_HEADER.size,
                                                                 slot * h.SLOT_SIZE))
                sequences.append(seq if magic == h.SLOT_MAGIC else 0)
            sequence = max(sequences) + 1
            payload = json.dumps(raw, separators=(",", ":")).encode()
            slot = (sequence % 2) * h.SLOT_SIZE
            os.pwrite(fd, payload, slot + h.SLOT_HEADER.size)
            os.pwrite(fd, h.SLOT_HEADER.pack(h.SLOT_MAGIC, sequence, len(payload),
                                             zlib.crc32(payload)), slot)
        finally:
            os.close(fd)
        return
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"][RECORD_KEY] = raw
    (path / "zarr.json").write_text(json.dumps(root))


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_old_format_store_reads_and_appends(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    old = [{"name": f"n{i}", "path": f"/p/{i}.npy", "reason": "missing motion file"}
           for i in range(3)]
    _old_format(path, old)
    with TokenStore.open(path) as s:
        assert s.meta["skipped"] == old and s.skipped == old and s.check() == []
    info = run_cli("info", path)
    assert info.exit_code == 0 and "skipped:      3\n" in info.output, info.output
    with TokenStore.open(path, "a") as s:  # appending keeps working
        s.append(["b"], [np.arange(2)], [["yo\n"]])
        s.update_meta({"skipped": old + [{"name": "n9", "path": "/p/9", "reason": "r"}]})
    with TokenStore.open(path) as s:
        assert len(s) == 2 and s.check() == []
        assert [e["name"] for e in s.meta["skipped"]] == ["n0", "n1", "n2", "n9"]


def test_oversized_record_fails_naming_store_and_keeps_last_commit(tmp_path):
    path = tmp_path / "big.h5"
    with TokenStore.create(path, 16) as s:
        s.append(["a"], [np.arange(3)], [["hi\n"]])
    with TokenStore.open(path, "a") as s:
        s.append(["b"], [np.arange(2)], [["yo\n"]])
        s.update_meta({"blob": "x" * (600 << 10)})
        with pytest.raises(StoreError, match=str(path)):
            s.commit()
        s._close(commit=False)
    with TokenStore.open(path) as s:  # still readable, at its last commit
        assert len(s) == 1 and s.check() == [] and "blob" not in s.meta


@pytest.mark.parametrize("old", [False, True])
def test_the_lists_handed_out_are_copies(tmp_path, old):
    """meta["skipped"] and .skipped are the caller's to change, flat entries (copied one by one)
    and nested ones alike, while writing, once committed, and in an older store's meta."""
    entries = [{"name": "a", "path": "/p/a", "reason": "r"},
               {"name": "b", "reason": "r", "detail": {"frames": [1, 2]}}]
    path = tmp_path / "s.zarr"
    if old:
        _old_format(path, entries)
    else:
        with TokenStore.create(path, 16) as s:
            s.append(["a"], [np.arange(3)], [["hi\n"]])
            s.update_meta({"skipped": entries})

    def spoil(s):
        for listed in (s.meta["skipped"], s.skipped):
            listed[0]["name"] = "changed"
            listed[1]["detail"]["frames"].append(3)
            listed.append({"name": "extra"})
        assert s.meta["skipped"] == entries and s.skipped == entries

    with TokenStore.open(path, "a") as s:
        spoil(s)
        s.update_meta({"skipped": entries})
        spoil(s)  # the writer's new list, not committed yet
    with TokenStore.open(path) as s:
        spoil(s)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x1c", "\x0b", "\x0c"])
def test_a_skipped_name_holding_a_unicode_line_separator_reads_back(tmp_path, separator):
    """A split name may hold characters that str.splitlines() breaks lines at (U+2028, NEL, ...;
    JSON leaves the non-ASCII ones unescaped): the list is lines split at "\\n" only, so a store
    that skipped such an entry reads back whole, through `info` and a resume."""
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    ghost = f"{dataset.names[0].split('/')[0]}/ghost{separator}name"
    names = dataset.names[:2] + [ghost] + dataset.names[2:]
    dataset.layout.split_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    store = tmp_path / "s.zarr"
    built = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert built.exit_code == 0, built.output
    with TokenStore.open(store) as s:
        assert s.check() == [] and len(s) == 4
        assert {e["name"] for e in s.skipped} == {ghost}
    info = run_cli("info", store)
    assert info.exit_code == 0 and "skipped:      2\n" in info.output, info.output
    again = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("data, count, says", [
    (b'{"name":"a"}\n{"name":"b"}\n', 3, "2 entries, the commit record says 3"),
    (b'{"name":"a"}\n{"name":"b"}', 2, "last line is unfinished"),
    (b'{"name":"a"},{"name":"b"}\n', 1, "2 entries"),  # two values on one line
    (b'{"name":"a"}\n\n', 1, "damaged skipped list: line 2: Expecting value"),  # blank line
    (b'{"name":"a"}\n{"name":"\xff"}\n', 2, "damaged skipped list: line 2: 'utf-8' codec"),
    (b'{"name":"a"}\n["a"]\n', 2, "line 2 is not an object"),
    (b'{"name":"a"}\n]\n', 2, "damaged skipped list: line 2: Expecting value"),
    (b'{"name":"a"},\n{"name":"b"}\n', 2, "damaged skipped list: line 1: Extra data"),
])
def test_a_damaged_list_with_a_matching_checksum_is_an_error_naming_the_store(data, count, says):
    """The checksum matches (a writer's bug, not a flipped bit): what the bytes hold is still
    checked line by line."""
    import zlib

    from tokstore.store import skipped as skipped_list
    from tokstore.store.errors import StoreCorruptError

    region = {"start": 0, "length": len(data), "count": count, "crc32": zlib.crc32(data)}
    with pytest.raises(StoreCorruptError, match=f"^where.zarr: .*{says}"):
        skipped_list.decode(data, region, "where.zarr")
    with pytest.raises(StoreCorruptError, match="do not match the commit record's checksum"):
        skipped_list.decode(data, {**region, "crc32": region["crc32"] ^ 1}, "where.zarr")


def _array_length(store) -> int:
    """How many bytes the store's skipped array holds (live list and dead ones)."""
    if store.suffix == ".h5":
        import h5py
        with h5py.File(store, "r") as f:
            return len(f["skipped"])
    return json.loads((store / "skipped" / "zarr.json").read_text())["shape"][0]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_list_rewritten_at_every_commit_keeps_the_array_within_a_few_lists(tmp_path, suffix):
    """Entries that fail to load are sorted in among the preflight skips, so each commit that
    finds one writes the whole list again: the array reuses the room dead lists left."""
    from tokstore.synthetic import corrupt

    dataset, checkpoint = tiny_setup(tmp_path, n=24)
    for name in dataset.names[::2]:
        corrupt(dataset, "nan", name)  # found while loading, one window at a time
    ghosts = [f"{dataset.names[0].split('/')[0]}/ghost_{i:05d}" for i in range(300)]
    dataset.layout.split_file.write_text("".join(f"{n}\n" for n in dataset.names + ghosts))
    store = tmp_path / f"s{suffix}"
    result = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip",
                                 "--commit-every", "1", "--window", "2"))
    assert result.exit_code == 0, result.output
    with TokenStore.open(store) as s:
        listed = s.skipped
        assert len(listed) == 12 + 2 * 300 and s.check() == []
    one_list = len(b"".join(json.dumps(e).encode() + b"\n" for e in listed))
    assert _array_length(store) <= 3 * one_list  # 12 rewrites: ~12 lists before


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_dataset_under_a_path_that_is_not_utf8_builds_and_lists_its_skips(tmp_path, suffix):
    """Linux paths are bytes: a folder name that is not UTF-8 (Python's surrogate escapes) is
    carried into the loader and the skipped list as it is, and printed without a traceback."""
    import os

    root = tmp_path / os.fsdecode(b"data-\xff")
    dataset, checkpoint = tiny_setup(root, n=6)
    names = dataset.names[:3] + [f"{dataset.names[0].split('/')[0]}/ghost"] + dataset.names[3:]
    dataset.layout.split_file.write_text("".join(f"{n}\n" for n in names))
    store = root / f"s{suffix}"
    result = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    assert "skipped 2:" in result.output
    with TokenStore.open(store) as s:
        assert len(s) == 6 and s.check() == []
        assert {e["path"] for e in s.skipped} >= {str(dataset.layout.motion_path(names[3]))}
    info = run_cli("info", store)
    assert info.exit_code == 0 and "skipped:      2\n" in info.output, info.output


@pytest.mark.parametrize("line, says", [
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"name":NaN}', "line 1: NaN is not JSON"),
    (b'{"name":Infinity}', "line 1: Infinity is not JSON"),
    (b"1", "line 1 is not an object"),
])
def test_a_list_line_that_parses_to_what_no_writer_writes_is_damage(line, says):
    import zlib

    from tokstore.store import skipped as skipped_list
    from tokstore.store.errors import StoreCorruptError

    data = line + b"\n"
    region = {"start": 0, "length": len(data), "count": 1, "crc32": zlib.crc32(data)}
    with pytest.raises(StoreCorruptError, match=f"^s.zarr: damaged skipped list: {re.escape(says)}"):
        skipped_list.decode(data, region, "s.zarr")


@pytest.mark.parametrize("listed", [5, "abc", {"name": "a"}, [1, 2], [{"name": "a"}, "b"]])
def test_an_older_stores_list_in_meta_that_is_not_a_list_of_entries_is_one_line(tmp_path, listed):
    path = tmp_path / "old.zarr"
    _old_format(path, [])
    record = _raw_record(path)
    _write_raw_record(path, {**record, "meta": {**record["meta"], "skipped": listed}})
    with TokenStore.open(path) as s:
        assert any("skipped" in problem for problem in s.check())
        with pytest.raises(StoreCorruptError, match=f"^{re.escape(str(path))}: .*skipped"):
            s.skipped
    result = run_cli("info", path)
    assert result.exit_code == 1 and result.output.startswith("error: ") and str(path) in result.output
    assert "Traceback" not in result.output


def test_an_entry_nested_too_deeply_to_read_back_is_refused_when_it_is_set(tmp_path):
    deep = {"name": "a"}
    for _ in range(200):
        deep = {"detail": deep}
    with TokenStore.create(tmp_path / "s.zarr", 16) as s:
        with pytest.raises(StoreError, match=r"nested more than \d+ deep"):
            s.update_meta({"skipped": [{"name": "x", "detail": deep}]})


def _nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [200, 5000])
def test_meta_nested_too_deeply_is_refused_when_it_is_set(tmp_path, depth):
    """A meta value ~500-990 deep was stored, and then store.meta (and `info`) raised
    RecursionError; from ~1,000 deep update_meta itself raised it (for the skipped list too)."""
    with TokenStore.create(tmp_path / "s.zarr", 16) as s:
        with pytest.raises(StoreError, match="nested more than"):
            s.update_meta({"x": _nested(depth)})
        with pytest.raises(StoreError, match="nested more than"):
            s.update_meta({"skipped": [{"name": "a", "x": _nested(depth)}]})
        s.update_meta({"x": _nested(100), "skipped": [{"name": "a", "x": _nested(99)}]})
    with TokenStore.open(tmp_path / "s.zarr") as s:
        assert s.meta["x"] == _nested(100)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_record_whose_meta_is_nested_too_deeply_is_one_line(tmp_path, suffix):
    """Such a record (written before, or by hand) is damage that names the store, not a
    RecursionError traceback."""
    from build_helpers import run_cli

    path = tmp_path / f"s{suffix}"
    with TokenStore.create(path, 16) as s:
        s.append(["a"], [np.arange(3)], [["hi\n"]])
    record = _raw_record(path)
    _write_raw_record(path, {**record, "meta": {**record["meta"], "x": _nested(700)}})
    with TokenStore.open(path) as s:
        with pytest.raises(StoreCorruptError, match="nested"):
            s.meta
    result = run_cli("info", path)
    assert result.exit_code == 1 and str(path) in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
