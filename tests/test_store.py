"""The token store, run against both containers: round trip, queries, counts, bad input, damage."""
from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from store_samples import CODEBOOK, batch, sample

from tokstore import TokenStore
from tokstore.store import (CodeRangeError, DuplicateNameError, NameNotFoundError, NotAStoreError,
                            SampleError, StoreCorruptError, StoreError, StoreLockedError,
                            StoreVersionError)
from tokstore.store import hdf5_container
from tokstore.store.format import RECORD_CHECKSUM, record_checksum

N = 60


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request):
    return request.param


def store_path(tmp_path, backend):
    return tmp_path / ("store.zarr" if backend == "zarr" else "store.h5")


def build(path, backend, n=N, step=7, **kwargs):
    """A committed store of samples 0..n-1, with tiny chunks so that samples span chunks."""
    with TokenStore.create(path, CODEBOOK, backend=backend, meta={"model": "test"},
                           chunk_bytes=64, **kwargs) as store:
        for start in range(0, n, step):
            store.append(*batch(start, min(start + step, n)))
            store.commit()
    return path


def built(copy_of_made, tmp_path, backend):
    """build(store_path(tmp_path, backend), backend): the store built once per test process,
    copied into tmp_path (nine commits of 64-byte chunks take ~10x the copy)."""
    copy_of_made(f"store-{backend}", lambda where: build(store_path(where, backend), backend))
    return store_path(tmp_path, backend)


def assert_samples(store, start, stop):
    for i in range(start, stop):
        name, codes, texts = sample(i)
        got = store[i]
        assert got.name == name and store.name(i) == name
        assert got.codes.dtype == store.code_dtype and np.array_equal(got.codes, codes)
        assert got.texts == texts and store.texts(i) == texts


def test_round_trip(copy_of_made, tmp_path, backend):
    path = built(copy_of_made, tmp_path, backend)
    with TokenStore.open(path) as store:
        assert (len(store), store.backend, store.codebook_size) == (N, backend, CODEBOOK)
        assert (store.end_token, store.pad_token, store.code_dtype) == (1000, 1001, np.uint16)
        assert_samples(store, 0, N)
        names = [sample(i)[0] for i in range(N)]
        assert store.names == names
        assert np.array_equal(store.lengths, [len(sample(i)[1]) for i in range(N)])
        assert store.lengths.dtype == np.int64
        assert store.index_of(names[41]) == 41 and store[names[13]].index == 13
        assert names[5] in store and "set0/nope" not in store
        assert np.array_equal(store[-1].codes, sample(N - 1)[1])
        assert np.array_equal(store[np.int64(3)].codes, store.codes(3))
        assert [s.name for s in store] == names
        with pytest.raises(NameNotFoundError):
            store["set0/nope"]
        with pytest.raises(KeyError):  # NameNotFoundError is also a KeyError
            store.index_of("set0/nope")
        with pytest.raises(IndexError):
            store[N]
        with pytest.raises(ValueError):  # views are read-only
            store[1].codes[:] = 0
        assert store.meta == {"model": "test"}
        assert store.check() == []
        offsets = np.concatenate([[0], np.cumsum(store.lengths)])
    chunk = 32  # 64-byte chunks of uint16 codes: some samples must span two
    assert any(a // chunk != (b - 1) // chunk for a, b in zip(offsets, offsets[1:]) if b > a)


def test_blank_lines_and_unicode_kept_verbatim(tmp_path, backend):
    lines = ["first\n", "\n", "\n", "ça va — 歩く\n", "   \n", "no newline"]
    path = store_path(tmp_path, backend)
    with TokenStore.create(path, 8, backend=backend) as store:
        store.append(["a b/c d", "x/ÿ z"], [[1, 2], np.zeros((1, 3), np.int32)], [lines, []])
    with TokenStore.open(path) as store:
        assert store["a b/c d"].texts == lines and store["x/ÿ z"].texts == []
        assert store["x/ÿ z"].codes.tolist() == [0, 0, 0]  # legacy (1, T') rows are accepted


def test_wide_codebook_uses_int32(tmp_path, backend):
    path = store_path(tmp_path, backend)
    codes = np.array([0, 65535, 65536, 69999])
    with TokenStore.create(path, 70000, backend=backend) as store:
        store.append(["n"], [codes], [["t\n"]])
    with TokenStore.open(path) as store:
        assert store.code_dtype == np.int32 and np.array_equal(store["n"].codes, codes)
        assert store.counts[70000] == 1 and store.counts[[65536, 69999]].tolist() == [1, 1]


def test_code_dtype_choices(tmp_path):
    for given, stored in [(np.int64, np.int64), (np.dtype("int32"), np.int32), ("uint16", np.uint16)]:
        with TokenStore.create(tmp_path / f"{stored.__name__}.zarr", 512, code_dtype=given) as store:
            store.append(["a"], [[511]], [[]])
        with TokenStore.open(tmp_path / f"{stored.__name__}.zarr") as store:
            assert store.code_dtype == stored and store["a"].codes.dtype == stored
    for bad in ["float32", "int8", object]:
        with pytest.raises(StoreError, match="code dtype"):
            TokenStore.create(tmp_path / "bad.zarr", 512, code_dtype=bad)
    with pytest.raises(StoreError, match="cannot hold"):
        TokenStore.create(tmp_path / "bad.zarr", 70000, code_dtype="uint16")


def test_select(copy_of_made, tmp_path, backend):
    path = built(copy_of_made, tmp_path, backend)
    samples = [sample(i) for i in range(N)]
    with TokenStore.open(path) as store:
        def expect(keep):
            return [i for i, s in enumerate(samples) if keep(*s)]

        assert store.select().tolist() == list(range(N))
        assert store.select(min_len=20).tolist() == expect(lambda n, c, t: len(c) >= 20)
        assert store.select(min_len=10, max_len=30).tolist() == expect(lambda n, c, t: 10 <= len(c) <= 30)
        assert store.select(name_glob="set1/sub dir 2/*").tolist() == expect(
            lambda n, c, t: n.startswith("set1/sub dir 2/"))
        assert store.select(name_glob="*_ü").tolist() == expect(lambda n, c, t: n.endswith("_ü"))
        walks = expect(lambda n, c, t: any("person walks" in line for line in t))
        assert walks and store.select(text_contains="PERSON Walks").tolist() == walks
        assert store.select(text_contains="人が歩").tolist() == expect(
            lambda n, c, t: any("人が歩" in line for line in t))
        # "newline" ends a line without '\n': a match must not run into the next line
        assert store.select(text_contains="newlinea").tolist() == []
        both = store.select(max_len=30, name_glob="set2/*", text_contains="jump")
        assert both.dtype == np.int64 and both.tolist() == expect(
            lambda n, c, t: len(c) <= 30 and n.startswith("set2/") and any("jump" in x for x in t))


def test_counts_and_probs(copy_of_made, tmp_path, backend):
    path = built(copy_of_made, tmp_path, backend)
    codes = np.concatenate([sample(i)[1] for i in range(N)])
    expected = np.zeros(CODEBOOK + 2, np.int64)
    expected[:CODEBOOK] = np.bincount(codes, minlength=CODEBOOK)
    expected[CODEBOOK] = N
    with TokenStore.open(path) as store:
        assert store.counts.dtype == np.int64 and np.array_equal(store.counts, expected)
        probs = store.probs()
        assert probs.dtype == np.float32 and probs.shape == (CODEBOOK + 2,)
        assert np.array_equal(probs, expected.astype(np.float32) / np.float32(expected.sum()))


def test_probs_match_the_golden_probability_file(tmp_path, golden):
    import torch

    directory, info = golden
    expected = torch.load(directory / "expected" / "prob.npy")
    codes = [np.load(directory / "expected" / "codes" / f"{name}.npy") for name in info["names"]]
    size = len(expected) - 2
    with TokenStore.create(tmp_path / "golden.zarr", size) as store:
        store.append(info["names"], codes, [[] for _ in codes])
    with TokenStore.open(tmp_path / "golden.zarr") as store:
        assert torch.equal(torch.from_numpy(store.probs()), expected)


def test_memory_url_store():
    url = f"memory://tokstore-test-{uuid.uuid4().hex}"
    build(url, "zarr", n=25)
    with TokenStore.open(url, mode="a") as store:
        assert len(store) == 25 and store.backend == "zarr"
        store.append(*batch(25, 40))
    with TokenStore.open(url) as store:
        assert len(store) == 40 and store.path == url
        assert_samples(store, 0, 40)
        assert store.select(name_glob="set0/*").size > 0 and store.check() == []


def test_writer_reads_only_committed_samples(tmp_path, backend):
    path = store_path(tmp_path, backend)
    store = TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=64)
    store.append(*batch(0, 10))
    assert len(store) == 0
    store.commit()
    store.append(*batch(10, 20))
    store._writer.flush()  # written past the commit point
    assert len(store) == 10 and store.counts[CODEBOOK] == 10
    with pytest.raises(IndexError):
        store[10]
    store.commit()
    assert len(store) == 20 and np.array_equal(store[15].codes, sample(15)[1])
    store.close()


def test_context_manager_commits_unless_an_error_escapes(tmp_path, backend):
    path = store_path(tmp_path, backend)
    with TokenStore.create(path, CODEBOOK, backend=backend) as store:
        store.append(*batch(0, 5))
    with pytest.raises(RuntimeError):
        with TokenStore.open(path, mode="a") as store:
            store.append(*batch(5, 9))
            raise RuntimeError("boom")
    with TokenStore.open(path) as store:
        assert len(store) == 5 and store.check() == []
        with pytest.raises(StoreError, match="read-only"):
            store.append(*batch(5, 6))
    with pytest.raises(StoreError, match="closed"):
        store[0]


def test_meta_and_update_meta(tmp_path, backend):
    path = store_path(tmp_path, backend)
    meta = {"legacy_code_dtype": "int32", "model_config": {"nb_code": 65536}, "source_paths": ["a"]}
    with TokenStore.create(path, CODEBOOK, backend=backend, meta=meta) as store:
        store.update_meta({"skipped": [{"name": "x", "reason": "too short"}]})
    with TokenStore.open(path) as store:
        assert store.meta == {**meta, "skipped": [{"name": "x", "reason": "too short"}]}
        store.meta["model_config"]["nb_code"] = 1  # a copy: the store is unchanged
        assert store.meta["model_config"]["nb_code"] == 65536
    with pytest.raises(StoreError, match="JSON"):
        TokenStore.create(tmp_path / "other.zarr", CODEBOOK, meta={"x": np.float32(1)})


def test_bad_appends_change_nothing(tmp_path, backend):
    path = store_path(tmp_path, backend)
    store = TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=64)
    store.append(*batch(0, 10))
    store.commit()
    store.append(*batch(10, 12))  # pending, not yet committed
    names, codes, texts = batch(20, 23)
    bad_cases = [
        (DuplicateNameError, "twice", ([names[0], names[0]], codes[:2], texts[:2])),
        (DuplicateNameError, "already in the store", ([sample(3)[0]], codes[:1], texts[:1])),
        (DuplicateNameError, "already in the store", ([sample(11)[0]], codes[:1], texts[:1])),
        (CodeRangeError, "1000", (names, [codes[0], np.array([5, 1000]), codes[2]], texts)),
        (CodeRangeError, "-1", (names, [codes[0], codes[1], np.array([-1])], texts)),
        (SampleError, "2 codes", (names, codes[:2], texts)),
        (SampleError, "2 texts", (names, codes, texts[:2])),
        (SampleError, "integer", (names, [np.ones(3) / 2, codes[1], codes[2]], texts)),
        (SampleError, "1-D", (names, [np.zeros((2, 3), int), codes[1], codes[2]], texts)),
        (SampleError, "list of str", (names, codes, ["a caption\n", [], []])),
        (SampleError, "name", (["", "b", "c"], codes, texts)),
        (SampleError, "name", ([7, "b", "c"], codes, texts)),
    ]
    for error, message, args in bad_cases:
        with pytest.raises(error, match=message) as caught:
            store.append(*args)
        assert "\n" not in str(caught.value)
    assert len(store) == 10
    store.append(names, codes, texts)  # the same good batch goes in afterwards
    store.close()
    with TokenStore.open(path) as store:
        assert len(store) == 15 and store.check() == []
        assert store.names == [sample(i)[0] for i in [*range(12), 20, 21, 22]]


def test_create_refuses_an_existing_store_unless_overwrite(tmp_path, backend):
    path = build(store_path(tmp_path, backend), backend, n=3)
    with pytest.raises(StoreError, match="already exists"):
        TokenStore.create(path, CODEBOOK, backend=backend)
    TokenStore.create(path, 5, backend=backend, overwrite=True).close()
    with TokenStore.open(path) as store:
        assert len(store) == 0 and store.codebook_size == 5
    if backend == "zarr":
        precious = tmp_path / "folder"
        precious.mkdir()
        (precious / "notes.txt").write_text("keep me")
    else:
        precious = tmp_path / "notes.h5"
        precious.write_text("keep me")
    with pytest.raises(StoreError, match="not overwriting"):
        TokenStore.create(precious, 5, backend=backend, overwrite=True)
    assert precious.exists()


def test_overwrite_refuses_a_store_another_writer_has_open(tmp_path, backend):
    path = build(store_path(tmp_path, backend), backend, n=3)
    with TokenStore.open(path, mode="a") as writer:
        with pytest.raises(StoreLockedError):
            TokenStore.create(path, 5, backend=backend, overwrite=True)
        writer.append(*batch(3, 5))
    with TokenStore.open(path) as store:
        assert len(store) == 5 and store.check() == []


def test_overwrite_killed_while_deleting_the_old_store(tmp_path, backend, monkeypatch):
    """Dying half-way through deleting the store being replaced: the path holds the old store
    whole or nothing (never a store missing half its files), and the next overwrite completes
    and leaves nothing beside it."""
    path = build(store_path(tmp_path, backend), backend, n=3)
    real_unlink = Path.unlink

    def dies_half_way(target, *args, **kwargs):
        files = sorted(p for p in Path(target).rglob("*") if p.is_file())
        for file in files[:len(files) // 2]:
            real_unlink(file)
        raise KeyboardInterrupt  # where a SIGKILL would stop it: nothing runs after

    def unlink_dies(self, *args, **kwargs):
        if self.name == path.name or (self.name.startswith(f".{path.name}.")
                                      and not self.name.endswith(".writer")):
            raise KeyboardInterrupt  # the HDF5 file: one unlink, the death just before it
        return real_unlink(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "rmtree", dies_half_way)
        patched.setattr(Path, "unlink", unlink_dies)
        with pytest.raises(KeyboardInterrupt):
            TokenStore.create(path, 5, backend=backend, overwrite=True)
    if path.exists():
        with TokenStore.open(path) as store:
            assert len(store) == 3 and store.check() == []
    TokenStore.create(path, 5, backend=backend, overwrite=True).close()
    with TokenStore.open(path) as store:
        assert len(store) == 0 and store.codebook_size == 5 and store.check() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_creation_whose_new_file_another_creator_cleared_starts_again(tmp_path, backend,
                                                                         monkeypatch):
    """Two processes creating one store: each clears what killed creations left beside it, and
    one may clear the other's new file or folder before its owner has locked it. The owner makes
    a fresh one (the race then ends in one store and an "already exists" for the other)."""
    from tokstore.store import oscalls

    path = store_path(tmp_path, backend)
    real_acquire, cleared = oscalls.WriterLock.acquire, []

    def acquire(target, store, fallback_file=None):
        target = Path(target)
        if target.name.startswith(f".{path.name}.creating-") and not cleared:
            cleared.append(target)  # what the other creator's remove_abandoned does
            oscalls._delete(target)
        return real_acquire(target, store, fallback_file)

    monkeypatch.setattr(oscalls.WriterLock, "acquire", staticmethod(acquire))
    with TokenStore.create(path, CODEBOOK, backend=backend) as store:
        store.append(*batch(0, 3))
    assert cleared
    with TokenStore.open(path) as store:
        assert len(store) == 3 and store.check() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_creation_the_file_system_cannot_lock_leaves_nothing(tmp_path, backend, monkeypatch):
    """A lock the file system refuses (not a race with another creator): the error, and no
    temporary file or folder and no descriptor left behind."""
    from tokstore.store import oscalls

    def refused(target, store, fallback_file=None):
        raise StoreError(f"{store}: cannot lock {target}: No locks available")

    monkeypatch.setattr(oscalls.WriterLock, "acquire", staticmethod(refused))
    before = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []
    path = store_path(tmp_path, backend)
    with pytest.raises(StoreError, match="No locks available"):
        TokenStore.create(path, CODEBOOK, backend=backend)
    assert list(tmp_path.iterdir()) == []
    if before:
        assert sorted(os.listdir("/proc/self/fd")) == before


def test_second_writer_is_refused(tmp_path, backend):
    path = build(store_path(tmp_path, backend), backend, n=3)
    with TokenStore.open(path, mode="a"):
        with pytest.raises(StoreLockedError):
            TokenStore.open(path, mode="a")
    TokenStore.open(path, mode="a").close()  # the lock goes with the writer


def test_backend_follows_the_suffix(tmp_path):
    TokenStore.create(tmp_path / "a.h5", 4).close()
    TokenStore.create(tmp_path / "a.zarr", 4).close()
    assert TokenStore.open(tmp_path / "a.h5").backend == "hdf5"
    assert TokenStore.open(tmp_path / "a.zarr").backend == "zarr"
    with pytest.raises(StoreError, match="backend"):
        TokenStore.create(tmp_path / "b", 4, backend="lmdb")


# ---- opening things that are not (healthy) stores -------------------------------------------
def test_not_a_store(tmp_path):
    import h5py
    import zarr

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello\n" * 200)
    zarr.open_group(tmp_path / "plain.zarr", mode="w").attrs["x"] = 1
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = [1, 2]
    for name in ["missing", "empty", "file.txt", "plain.zarr", "plain.h5"]:
        with pytest.raises(NotAStoreError) as caught:
            TokenStore.open(tmp_path / name)
        assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match="mode"):
        TokenStore.open(tmp_path / "plain.zarr", mode="w")


def rewrite_record(path, backend, change, reseal=True):
    """Apply change(dict) to the stored commit record, as a damaged or future store would have;
    reseal: with a matching record checksum, as a buggy or future writer would write it."""
    def apply(raw):
        change(raw)
        if reseal:
            raw[RECORD_CHECKSUM] = record_checksum(raw)

    if backend == "zarr":
        root = json.loads((path / "zarr.json").read_text())
        apply(root["attributes"]["tokstore"])
        (path / "zarr.json").write_text(json.dumps(root))
        return
    fd = os.open(path, os.O_RDWR)
    record, sequence = hdf5_container._read_record(fd, str(path))
    raw = record.to_dict()
    apply(raw)
    payload = json.dumps(raw).encode()
    header = hdf5_container.SLOT_HEADER.pack(hdf5_container.SLOT_MAGIC, sequence + 1,
                                             len(payload), zlib.crc32(payload))
    os.pwrite(fd, header + payload, ((sequence + 1) % 2) * hdf5_container.SLOT_SIZE)
    os.close(fd)


@pytest.mark.parametrize("change, error, message", [
    (lambda r: r.update(format_version=99), StoreVersionError, "format version 99"),
    (lambda r: r.update(codebook_size="big"), StoreCorruptError, "codebook_size"),
    (lambda r: r["lengths"].update(offsets=3), StoreCorruptError, "offsets"),
    (lambda r: r.pop("checksums"), StoreCorruptError, "checksums"),
    (lambda r: r.update(code_dtype="float32"), StoreCorruptError, "code_dtype"),
    (lambda r: r.update(counts_slot=2), StoreCorruptError, "counts_slot"),
    (lambda r: r["lengths"].update(codes=10**6), StoreCorruptError, "codes"),
])
def test_damaged_or_newer_records(tmp_path, backend, change, error, message):
    path = build(store_path(tmp_path, backend), backend, n=10)
    rewrite_record(path, backend, change)
    for mode in ("r", "a"):
        with pytest.raises(error, match=message) as caught:
            TokenStore.open(path, mode=mode)
        assert "\n" not in str(caught.value)


def test_unreadable_record(tmp_path, backend):
    path = build(store_path(tmp_path, backend), backend, n=3)
    if backend == "zarr":
        (path / "zarr.json").write_text('{"attributes": {"tokstore": ')
    else:
        with open(path, "r+b") as f:  # both userblock slots
            for slot in range(2):
                f.seek(slot * hdf5_container.SLOT_SIZE + 30)
                f.write(b"\xff" * 8)
    with pytest.raises(StoreCorruptError, match="damaged"):
        TokenStore.open(path)


# ---- check() ---------------------------------------------------------------------------------
def flip_code_byte(path, backend, chunk: int):
    if backend == "zarr":
        where, offset = path / "codes" / "c" / str(chunk), 5
    else:
        with TokenStore.open(path) as store:
            offset, _ = store._container.chunk_location("codes", chunk)
        where = path
        offset += 5
    with open(where, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def test_check_finds_a_flipped_byte(copy_of_made, tmp_path, backend):
    path = built(copy_of_made, tmp_path, backend)
    flip_code_byte(path, backend, chunk=2)
    with TokenStore.open(path) as store:
        problems = store.check()
    assert problems and problems[0].startswith("codes: checksum mismatch")
    assert all(not p.startswith(("names", "text", "offsets")) for p in problems)


def test_check_finds_a_missing_chunk_file(copy_of_made, tmp_path):
    path = built(copy_of_made, tmp_path, "zarr")
    (path / "codes" / "c" / "3").unlink()
    with TokenStore.open(path) as store:
        problems = store.check()
        assert any(p.startswith("codes:") and "missing" in p for p in problems)
        with pytest.raises(StoreCorruptError, match="missing"):
            for i in range(len(store)):
                store[i].codes


class Killed(Exception):
    """Stands for SIGKILL at one chosen moment of a commit."""


def test_commit_cut_short_after_writing_counts_keeps_the_last_commit(tmp_path, backend):
    """A writer dying after it wrote the new counts but before the record: the record still names
    the old counts slot, which is intact, so the store is healthy and a resumed writer carries on."""
    path = build(store_path(tmp_path, backend), backend, n=20)
    with TokenStore.open(path) as store:
        committed = store.counts.copy()

    def die(record):
        raise Killed

    with pytest.raises(Killed), TokenStore.open(path, mode="a") as store:
        store.append(*batch(20, 27))
        store._container.write_record = die
        store.commit()
    with TokenStore.open(path) as store:
        reader, record = store._read(), store._record
        cut_short = reader.array("counts").read(*record.counts_span(1 - record.counts_slot))
        assert cut_short[CODEBOOK] == 27  # the other slot holds the counts of the lost commit
        assert len(store) == 20 and np.array_equal(store.counts, committed)
        assert store.check() == []
    with TokenStore.open(path, mode="a") as store:
        store.append(*batch(20, 27))
    with TokenStore.open(path) as store:
        assert len(store) == 27 and store.counts[CODEBOOK] == 27
        assert store.check() == []


def edit_counts_slot(path, backend, slot: int):
    """Add 1 to one stored count of a counts slot, in place, behind the store's back."""
    with TokenStore.open(path) as store:
        entry = int(np.argmax(store.counts))
        if backend == "zarr":
            where, offset = path / "counts" / "c" / str(slot), 0
        else:
            where, (offset, _) = path, store._container.chunk_location("counts", slot)
    with open(where, "r+b") as f:
        f.seek(offset + 8 * entry)
        value = int.from_bytes(f.read(8), "little")
        f.seek(offset + 8 * entry)
        f.write((value + 1).to_bytes(8, "little"))


def test_check_finds_a_changed_count_in_the_current_slot(tmp_path, backend):
    path = build(store_path(tmp_path, backend), backend, n=20)  # three commits: both slots used
    with TokenStore.open(path) as store:
        right, slot = store.counts.copy(), store._record.counts_slot
    edit_counts_slot(path, backend, 1 - slot)  # the slot no commit names: harmless
    with TokenStore.open(path) as store:
        assert store.check() == [] and np.array_equal(store.counts, right)
    edit_counts_slot(path, backend, slot)
    with TokenStore.open(path) as store:
        problems = store.check()
        assert [p.split(" (")[0] for p in problems] == [
            "counts: checksum mismatch", "counts: the stored array does not match the committed codes"]
        assert np.array_equal(store.counts, right)  # readers recompute a damaged slot
    with TokenStore.open(path, mode="a") as store:  # the next commit writes right counts
        store.append(*batch(20, 21))
    with TokenStore.open(path) as store:
        assert store.check() == [] and store.counts[CODEBOOK] == 21


def test_hdf5_superblock_checksum():
    """lookup3 as HDF5 computes it (known vector from Bob Jenkins' lookup3.c driver5)."""
    assert hdf5_container.lookup3(b"") == 0xDEADBEEF
    assert hdf5_container.lookup3(b"Four score and seven years ago") == 0x17770551
    assert struct.calcsize("<8sBBBBQQQQI") == 48


def test_local_zarr_offsets_are_a_shared_map_of_the_chunk_files(tmp_path):
    """Page-sized chunks: the whole offsets array is the chunk files mapped end to end (no copy,
    so DataLoader workers share the pages); a later commit's reader sees the new values."""
    path = tmp_path / "store.zarr"
    page = os.sysconf("SC_PAGE_SIZE")
    n = 3 * page // 8 + 5  # offsets span four chunks, the last one partly committed
    codes = [np.full(i % 4, i % CODEBOOK) for i in range(n)]
    with TokenStore.create(path, CODEBOOK, chunk_bytes=page) as store:
        store.append([f"s{i}" for i in range(n)], codes, [[]] * n)
    expected = np.concatenate([[0], np.cumsum([len(c) for c in codes])])
    with TokenStore.open(path) as store:
        offsets = store._reader.whole_array("offsets")
        assert np.array_equal(offsets, expected) and not offsets.flags.writeable
        assert not offsets.flags.owndata and offsets.base is not None
        chunk_files = [np.fromfile(path / "offsets" / "c" / str(k), "<i8") for k in range(4)]
        assert np.array_equal(offsets, np.concatenate(chunk_files)[:n + 1])
        assert len(store.names) == n and store.name(n - 1) == f"s{n - 1}"
    with TokenStore.open(path, mode="a") as store:
        store.append(["late"], [np.arange(7)], [["x\n"]])
    with TokenStore.open(path) as store:
        offsets = store._reader.whole_array("offsets")
        assert len(offsets) == n + 2 and offsets[-1] == expected[-1] + 7
        assert not offsets.flags.owndata and np.array_equal(offsets[:n + 1], expected)
        assert store.texts(n) == ["x\n"] and store.check() == []


def test_tiny_chunks_fall_back_to_a_read_only_copy(copy_of_made, tmp_path):
    path = built(copy_of_made, tmp_path, "zarr")  # 64-byte chunks: not page-aligned
    with TokenStore.open(path) as store:
        offsets = store._reader.whole_array("offsets")
        assert offsets.flags.owndata and not offsets.flags.writeable
        assert np.array_equal(offsets, np.concatenate([[0], np.cumsum(store.lengths)]))
        assert_samples(store, 0, N)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_reader_keeps_a_bounded_number_of_chunks_mapped(tmp_path, backend, monkeypatch):
    """Every chunk a reader mapped stayed mapped: a store of more chunk files than the kernel's
    vm.max_map_count (65,530: chunk_bytes=8 and ~4,000 samples) read as damaged ("cannot map
    ...: Cannot allocate memory") and `verify` died with a MemoryError."""
    from tokstore.store import chunks

    monkeypatch.setattr(chunks, "MAPPED_CHUNKS", 8)
    path = tmp_path / ("s.zarr" if backend == "zarr" else "s.h5")
    with TokenStore.create(path, CODEBOOK, backend=backend, chunk_bytes=64) as store:
        store.append(*batch(0, 200))
    with TokenStore.open(path) as store:
        assert [store.codes(i).tolist() for i in range(200)] == [c.tolist()
                                                                for c in batch(0, 200)[1]]
        assert store.check() == []
        codes = store._read().array("codes")
        assert len(codes._chunks) > 100
        assert sum(chunk is not None for chunk in codes._chunks) <= 8
