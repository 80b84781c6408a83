"""Every verb of the CLI against what the OS can say no with: a directory where a file should be
(EISDIR), a path under a regular file (ENOTDIR), a 300-character name (ENAMETOOLONG), a read-only
file system (EROFS: a read-only mount where permitted, else injected), a full disk (ENOSPC:
injected at the write). Each must end in ONE line naming the file, a non-zero exit, no traceback,
and no temporary file left behind."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from build_helpers import build_args, contents, run_cli, tiny_setup

from tokstore import TokenStore, build_plan, legacy


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, its checkpoint, a built store, a regular file and a directory to misuse."""
    base = tmp_path_factory.mktemp("world")
    dataset, checkpoint = tiny_setup(base, n=6)
    store = base / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, store)).exit_code == 0
    legacy_pickle = base / "all_data.pkl"
    assert run_cli("export-pickle", store, legacy_pickle).exit_code == 0
    (base / "file").write_text("a regular file")
    (base / "dir").mkdir()
    return {"base": base, "dataset": dataset, "checkpoint": checkpoint, "store": store,
            "pickle": legacy_pickle, "file": base / "file", "dir": base / "dir",
            "long": base / ("x" * 300)}


def leftovers(directory) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if p.name.endswith((".tmp", ".partial"))
                  or p.name.startswith(".tokstore-"))


def assert_one_line(result, names):
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(errors) == 1, result.output
    assert str(names) in errors[0], errors[0]
    return errors[0]


# verb -> args, with BAD standing for the misused path
VERBS = {
    "build --store": lambda w, bad: build_args(w["dataset"], w["checkpoint"], bad),
    "build --checkpoint": lambda w, bad: build_args(w["dataset"], bad, w["base"] / "n.zarr"),
    "build --split": lambda w, bad: build_args(w["dataset"], w["checkpoint"],
                                               w["base"] / "n.zarr", "--split", bad),
    "info": lambda w, bad: ["info", bad],
    "show": lambda w, bad: ["show", bad, "x"],
    "ls": lambda w, bad: ["ls", bad],
    "stats": lambda w, bad: ["stats", bad],
    "stats --plot": lambda w, bad: ["stats", w["store"], "--plot", bad],
    "verify": lambda w, bad: ["verify", bad],
    "decode OUT": lambda w, bad: ["decode", w["store"], w["dataset"].names[0], bad,
                                  "--checkpoint", w["checkpoint"]],
    "export-npy": lambda w, bad: ["export-npy", w["store"], bad],
    "export-prob": lambda w, bad: ["export-prob", w["store"], bad],
    "export-pickle": lambda w, bad: ["export-pickle", w["store"], bad],
    "export-pickle --split": lambda w, bad: ["export-pickle", w["store"], w["base"] / "o.pkl",
                                             "--split", bad],
    "import --store": lambda w, bad: ["import", "--store", bad, "--pickle", w["pickle"],
                                      "--codebook-size", 64000],
    "import --pickle": lambda w, bad: ["import", "--store", w["base"] / "i.zarr", "--pickle", bad,
                                       "--codebook-size", 64000],
    "demo --dir": lambda w, bad: ["demo", "--dir", bad],
}
MISUSES = {
    "EISDIR": lambda w: w["dir"],
    "ENOTDIR": lambda w: w["file"] / "below",
    "ENAMETOOLONG": lambda w: w["long"],
}
# where a directory is a fine answer (a store, an output folder), EISDIR is no misuse
NOT_A_MISUSE = {("EISDIR", v) for v in ("build --store", "export-npy", "demo --dir", "info",
                                        "show", "ls", "stats", "verify", "import --store")}


@pytest.mark.parametrize("misuse", MISUSES)
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_answers_a_bad_path_with_one_line(world, verb, misuse):
    if (misuse, verb) in NOT_A_MISUSE:
        pytest.skip("a directory is what this argument is")
    bad = MISUSES[misuse](world)
    before = sorted(p.name for p in world["base"].iterdir())
    result = run_cli(*VERBS[verb](world, bad))
    assert_one_line(result, bad)
    assert leftovers(world["base"]) == []
    assert sorted(p.name for p in world["base"].iterdir()) == before
    assert contents(world["store"])["check"] == []


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only mount (root in a container that permits it); otherwise EROFS is injected."""
    target = tmp_path / "ro"
    target.mkdir()
    (target / "inside").mkdir()
    ok = subprocess.run(["mount", "--bind", str(target), str(target)], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"cannot mount here: {ok.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target / "inside"
    finally:
        subprocess.run(["umount", str(target)], check=True)


READ_ONLY_VERBS = ["build --store", "export-npy", "export-prob", "export-pickle", "decode OUT",
                   "import --store", "demo --dir", "stats --plot"]


@pytest.mark.parametrize("verb", READ_ONLY_VERBS)
def test_a_read_only_file_system_is_one_line(world, read_only_dir, verb):
    bad = read_only_dir / ("out.zarr" if "store" in verb else "out")
    line = assert_one_line(run_cli(*VERBS[verb](world, bad)), read_only_dir)
    assert "Read-only file system (EROFS)" in line


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("verb", ["export-pickle", "export-prob"])
def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(world, tmp_path,
                                                                     monkeypatch, verb, code):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "result"
    if verb == "export-pickle":
        def dump(data, f, protocol):
            f.write(b"partial")
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(legacy.pickle, "dump", dump)
    else:
        def save(obj, f):
            f.write(b"partial")
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(torch, "save", save)  # legacy imports torch where it saves
    line = assert_one_line(run_cli(verb, world["store"], target), target)
    assert f"({errno.errorcode[code]})" in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_during_export_npy_names_the_file(world, tmp_path, monkeypatch, code):
    """The third file fails half-written: the two before it stay whole, no partial file."""
    real_save, saved = np.save, []

    def save(f, codes):
        saved.append(1)
        if len(saved) == 3:
            f.write(b"\x93NUMPY partial")
            raise OSError(code, os.strerror(code))
        real_save(f, codes)

    monkeypatch.setattr(legacy.np, "save", save)
    monkeypatch.setattr(legacy, "SAVE_THREADS", 1)
    line = assert_one_line(run_cli("export-npy", world["store"], tmp_path / "codes"),
                           tmp_path / "codes")
    assert f"({errno.errorcode[code]})" in line
    written = sorted((tmp_path / "codes").rglob("*.npy"))
    assert len(written) >= 2 and all(np.load(p).shape[0] == 1 for p in written)


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_a_full_disk_during_a_build_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                      name):
    dataset, checkpoint = tiny_setup(tmp_path, n=24)
    store = tmp_path / name
    real_append, calls = TokenStore.append, []

    def append(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(self, *args)

    monkeypatch.setattr(TokenStore, "append", append)
    args = build_args(dataset, checkpoint, store, "--window", "4", "--commit-every", "1")
    line = assert_one_line(run_cli(*args), store)
    assert "No space left on device (ENOSPC)" in line
    assert len(contents(store)["names"]) == 8  # the two windows committed before the failure
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(TokenStore, "append", real_append)
    assert run_cli(*args).exit_code == 0
    assert contents(store)["names"] == dataset.names


def test_a_store_created_under_the_build_is_refused_naming_the_flag_not_the_api(tmp_path,
                                                                                  monkeypatch):
    """Another process creates the store between the build's check and its create."""
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    store = tmp_path / "s.h5"
    real = build_plan._open_existing

    def racing(path):
        found = real(path)
        TokenStore.create(path, 8).close()
        return found

    monkeypatch.setattr(build_plan, "_open_existing", racing)
    line = assert_one_line(run_cli(*build_args(dataset, checkpoint, store)), store)
    assert "overwrite=True" not in line and "--store" in line


def test_a_nul_byte_in_a_split_name_is_one_line(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    split = dataset.layout.split_file
    split.write_bytes(split.read_bytes() + b"bad\x00name\n")
    line = assert_one_line(run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr")), split)
    assert f"{split}:5:" in line and "NUL" in line
    assert not (tmp_path / "s.zarr").exists()


def test_an_unwritable_pickle_destination_keeps_the_old_file(world, tmp_path, monkeypatch):
    """A failed export never damages the file it would have replaced."""
    target = tmp_path / "all_data.pkl"
    target.write_bytes(pickle.dumps("old"))

    def dump(data, f, protocol):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(legacy.pickle, "dump", dump)
    assert_one_line(run_cli("export-pickle", world["store"], target), target)
    assert pickle.loads(target.read_bytes()) == "old"
    assert np.array_equal(sorted(os.listdir(tmp_path)), ["all_data.pkl"])
