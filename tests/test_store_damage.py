"""Damaged stores through the CLI: one line naming the store, a non-zero exit, within seconds
(a hang is caught by the subprocess timeout), and never a quiet rollback or an empty export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import preforked
import pytest
from build_helpers import subprocess_env
from store_samples import CODEBOOK, batch

from tokstore import TokenStore
from tokstore.store import StoreCorruptError, hdf5_container

REPO = Path(__file__).resolve().parent.parent
VERBS = ("info", "show", "verify", "export-pickle")


def build(path, backend, n=300, commits=1):
    with TokenStore.create(path, CODEBOOK, backend=backend,
                           meta={"mean": [0.5, 1.5], "checkpoint_sha256": "ab" * 32}) as store:
        for k in range(commits):
            store.append(*batch(k * n // commits, (k + 1) * n // commits))
            store.commit()
    return path


def built(copy_of_made, tmp_path, backend, commits=1):
    """build(tmp_path / "store.zarr" or "store.h5", backend, commits=commits), built once per
    test process and copied into tmp_path (each test damages its own copy)."""
    name = "store.zarr" if backend == "zarr" else "store.h5"
    copy_of_made(f"damage-{backend}-{commits}", lambda where: build(where / name, backend,
                                                                    commits=commits))
    return tmp_path / name


def start_cli(*args):
    return preforked.popen([sys.executable, "-m", "cli", *map(str, args)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=subprocess_env(), preload="store")  # VERBS need no torch


def finish(process, timeout=120):
    """The finished CLI run; a hang fails here (the old HDF5 readers took 15+ minutes)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"{process.args[3]} did not finish in {timeout} s") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def cli(*args):
    return finish(start_cli(*args))


def assert_one_line_error(result, path):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], \
        result.stderr
    return lines[0]


def run_verbs(path, tmp_path, verbs=VERBS):
    """Every verb on the damaged store: one line each; export-pickle writes nothing."""
    out = tmp_path / "all_data.pkl"
    args = {"info": [path], "show": [path, batch(3, 4)[0][0]], "verify": [path],
            "export-pickle": [path, out]}
    running = {verb: start_cli(verb, *args[verb]) for verb in verbs}  # side by side: startup
    messages = {verb: assert_one_line_error(finish(process), path)
                for verb, process in running.items()}
    assert not out.exists()
    return messages


# ---- HDF5 files HDF5 itself cannot read: fail at once, not after SWMR's retries ------------
def test_truncated_hdf5_fails_fast(copy_of_made, tmp_path):
    path = built(copy_of_made, tmp_path, "hdf5")
    os.truncate(path, hdf5_container.USERBLOCK + 100_000)
    messages = run_verbs(path, tmp_path)
    assert all("damaged" in m for m in messages.values()), messages


def test_damaged_hdf5_superblock_fails_fast(copy_of_made, tmp_path):
    path = built(copy_of_made, tmp_path, "hdf5")
    with open(path, "r+b") as f:
        f.seek(hdf5_container.USERBLOCK + 30)  # inside the root group address
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    run_verbs(path, tmp_path)


# ---- the newest commit record damaged: loud, never the older commit ------------------------
def newest_slot(path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        sequences = [hdf5_container.SLOT_HEADER.unpack(
            os.pread(fd, hdf5_container.SLOT_HEADER.size, slot * hdf5_container.SLOT_SIZE))[1]
            for slot in range(2)]
    finally:
        os.close(fd)
    return int(np.argmax(sequences))


def test_flipped_bit_in_newest_hdf5_record_is_an_error(copy_of_made, tmp_path):
    path = built(copy_of_made, tmp_path, "hdf5", commits=2)
    with open(path, "r+b") as f:  # one bit of the newest record's payload
        f.seek(newest_slot(path) * hdf5_container.SLOT_SIZE + hdf5_container.SLOT_HEADER.size + 40)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    messages = run_verbs(path, tmp_path)
    assert all("damaged newest commit record" in m for m in messages.values()), messages
    with TokenStore.open(path, rollback=True) as store:  # asked for: the previous commit
        assert len(store) == 150 and store.check() == []
    with TokenStore.open(path, mode="a", rollback=True) as store:  # rewrites the damaged slot
        store.append(*batch(150, 300))
    with TokenStore.open(path) as store:
        assert len(store) == 300 and store.check() == []


def test_torn_record_write_reads_the_previous_commit(copy_of_made, tmp_path):
    """A commit killed while its record was written: the payload is half new, the slot's header
    still the older one (the header is written after the payload): the previous commit opens,
    and check() finds nothing wrong."""
    path = built(copy_of_made, tmp_path, "hdf5", commits=2)
    older = 1 - newest_slot(path)
    with open(path, "r+b") as f:
        f.seek(older * hdf5_container.SLOT_SIZE + hdf5_container.SLOT_HEADER.size + 10)
        f.write(b"\x00" * 4096)
    with TokenStore.open(path) as store:
        assert len(store) == 300 and store.check() == []
    assert cli("verify", path).returncode == 0


# ---- the zarr commit record: a checksum, so edits do not pass ------------------------------
@pytest.mark.parametrize("edit, verbs", [
    (lambda record: record["meta"]["mean"].__setitem__(0, 0.25), VERBS),
    (lambda record: record["meta"].__setitem__("checkpoint_sha256", "cd" * 32), ("verify",)),
    (lambda record: record["lengths"].__setitem__("text", record["lengths"]["text"] - 1),
     ("verify",)),
])
def test_edited_zarr_record_is_an_error(copy_of_made, tmp_path, edit, verbs):
    path = built(copy_of_made, tmp_path, "zarr")
    root = json.loads((path / "zarr.json").read_text())
    edit(root["attributes"]["tokstore"])
    (path / "zarr.json").write_text(json.dumps(root, indent=2))
    messages = run_verbs(path, tmp_path, verbs)
    assert all("checksum" in m for m in messages.values()), messages


def test_zarr_record_without_checksum_still_reads(copy_of_made, tmp_path):
    """Stores written before the record checksum open as they are."""
    path = built(copy_of_made, tmp_path, "zarr")
    root = json.loads((path / "zarr.json").read_text())
    del root["attributes"]["tokstore"]["record_crc32"]
    (path / "zarr.json").write_text(json.dumps(root, indent=2))
    assert cli("verify", path).returncode == 0
    with TokenStore.open(path, mode="a") as store:  # the next commit adds one
        store.update_meta({"note": "x"})
    assert "record_crc32" in json.loads((path / "zarr.json").read_text())["attributes"]["tokstore"]


# ---- damaged arrays the reader meets one sample at a time ----------------------------------
def damage_offsets(path, backend, index, value):
    if backend == "zarr":
        where, offset = path / "offsets" / "c" / "0", index * 8
    else:
        with TokenStore.open(path) as store:
            where, offset = path, store._container.chunk_location("offsets", 0)[0] + index * 8
    with open(where, "r+b") as f:
        f.seek(offset)
        f.write(np.int64(value).tobytes())


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_damaged_offsets_are_a_store_error(copy_of_made, tmp_path, backend):
    path = built(copy_of_made, tmp_path, backend)
    damage_offsets(path, backend, 4, 10**12)  # sample 3 ends, sample 4 starts far outside
    assert_one_line_error(cli("show", path, batch(3, 4)[0][0]), path)
    with TokenStore.open(path) as store:
        with pytest.raises(StoreCorruptError, match=f"{path}: damaged offsets: sample 3"):
            store.codes(3)
        with pytest.raises(StoreCorruptError, match="damaged offsets"):
            store.lengths
    assert cli("verify", path).returncode == 1


@pytest.mark.parametrize("codecs", [
    [{"name": "bytes", "configuration": {"endian": "little"}},
     {"name": "gzip", "configuration": {"level": 1}}],
    [{"name": "no-such-codec"}],
    "not a list",
])
def test_zarr_array_with_another_codec_is_a_store_error(copy_of_made, tmp_path, codecs):
    path = built(copy_of_made, tmp_path, "zarr")
    meta_file = path / "codes" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"] = codecs
    meta_file.write_text(json.dumps(meta))
    line = assert_one_line_error(cli("show", path, batch(3, 4)[0][0]), path)
    assert "codes" in line
    with pytest.raises(StoreCorruptError, match=str(path)):
        with TokenStore.open(path) as store:
            store.codes(3)
