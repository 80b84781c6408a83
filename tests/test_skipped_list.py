"""Issue 13: the skipped list is unbounded, so it lives in the store's arrays, not in the commit
record (whose HDF5 slot holds 512 KiB): a build skipping thousands of entries must commit, read
back and resume on both backends, and stores written with the list in the record still read."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.build_helpers import build_args, run_cli, tiny_setup
from tokstore import TokenStore
from tokstore.store.errors import StoreError

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
    (b'["a"]\n', 1, "1 entries, the commit record says 1"),  # not a dict
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
