"""Legacy files through the CLI: golden exports equal the original's, imports round-trip, and an
untrusted pickle cannot run code."""
from __future__ import annotations

import collections
import os
import pickle
import pickletools
import textwrap

import numpy as np
import preforked
import pytest
import torch

import cli
from build_helpers import REPO, OnceBuiltCliRunner, subprocess_env
from tokstore import TokenStore
from tokstore.legacy import legacy_probs, read_all_data

runner = OnceBuiltCliRunner()


def tokstore(*args) -> object:
    return runner.invoke(cli.app, [str(arg) for arg in args])


def succeeds(*args):
    result = tokstore(*args)
    assert result.exit_code == 0, result.output
    return result


def one_error_line(result) -> str:
    """The only `error:` line of a failed command (progress bars aside), no traceback."""
    errors = [line for line in result.output.splitlines() if "error: " in line]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def fails(*args, says: str):
    """The command exits 1 with a one-line error naming the problem."""
    result = tokstore(*args)
    assert result.exit_code == 1, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and says in error_lines[0], result.stderr
    return result


def golden_paths(path):
    dataset = path / "dataset"
    return {"codes": path / "expected" / "codes", "texts": dataset / "texts",
            "split": dataset / "split" / "version1" / "t2m_60_300" / "all.txt",
            "prob": path / "expected" / "prob.npy", "pickle": path / "expected" / "all_data.pkl"}


def load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def pickle_globals(path) -> set[str]:
    """The module.name pairs a pickle references (STACK_GLOBAL takes the two strings before it)."""
    strings, found = [], set()
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
    return found


def assert_all_data_equal(ours: dict, expected: dict):
    assert list(ours) == list(expected) == ["text_data", "code_data", "file_names"]
    assert type(ours["file_names"]) is list and ours["file_names"] == expected["file_names"]
    assert list(ours["text_data"]) == list(expected["text_data"])
    assert list(ours["code_data"]) == list(expected["code_data"])
    for name, lines in expected["text_data"].items():
        assert type(ours["text_data"][name]) is list and ours["text_data"][name] == lines
    for name, codes in expected["code_data"].items():
        mine = ours["code_data"][name]
        assert type(mine) is np.ndarray and mine.dtype == codes.dtype and mine.shape == codes.shape
        assert mine.flags.c_contiguous and np.array_equal(mine, codes)


def assert_code_dirs_equal(ours, expected):
    files = sorted(p.relative_to(expected) for p in expected.rglob("*.npy"))
    assert sorted(p.relative_to(ours) for p in ours.rglob("*.npy")) == files
    for relative in files:
        mine, theirs = np.load(ours / relative), np.load(expected / relative)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert np.array_equal(mine, theirs)


def assert_stores_equal(a_path, b_path):
    with TokenStore.open(a_path) as a, TokenStore.open(b_path) as b:
        assert list(a.names) == list(b.names)
        assert a.codebook_size == b.codebook_size
        assert a.meta["legacy_code_dtype"] == b.meta["legacy_code_dtype"]
        assert np.array_equal(a.counts, b.counts)
        for i in range(len(a)):
            assert np.array_equal(a.codes(i), b.codes(i))
            assert list(a.texts(i)) == list(b.texts(i))


# ---------------------------------------------------------------------------------------------
# golden sets: the exports equal what the original wrote

def test_golden_code_dir_import_exports_the_original_files(golden, tmp_path):
    path, info = golden
    files = golden_paths(path)
    store = tmp_path / "store"
    succeeds("import", "--store", store, "--codes-dir", files["codes"], "--texts-dir", files["texts"],
             "--split", files["split"], "--prob", files["prob"])
    with TokenStore.open(store) as opened:
        assert list(opened.names) == info["names"]
        assert opened.codebook_size == info["codebook_size"]   # read off the prob file
        assert opened.meta["legacy_code_dtype"] == info["code_dtype"]
        assert int(opened.lengths.sum()) + len(opened) == info["total_tokens"]   # + end tokens

    succeeds("export-npy", store, tmp_path / "codes")
    assert_code_dirs_equal(tmp_path / "codes", files["codes"])

    succeeds("export-prob", store, tmp_path / "prob.npy")
    ours, theirs = torch.load(tmp_path / "prob.npy"), torch.load(files["prob"])
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)

    succeeds("export-pickle", store, tmp_path / "all_data.pkl")
    assert_all_data_equal(load_pickle(tmp_path / "all_data.pkl"), load_pickle(files["pickle"]))
    assert pickle_globals(tmp_path / "all_data.pkl") == pickle_globals(files["pickle"])


def test_golden_pickle_import_exports_the_original_files(golden, tmp_path):
    path, info = golden
    files = golden_paths(path)
    store = tmp_path / "store"
    succeeds("import", "--store", store, "--pickle", files["pickle"],
             "--codebook-size", info["codebook_size"])
    succeeds("export-pickle", store, tmp_path / "all_data.pkl")
    assert_all_data_equal(load_pickle(tmp_path / "all_data.pkl"), load_pickle(files["pickle"]))
    succeeds("export-prob", store, tmp_path / "prob.npy")   # counts recomputed from the codes
    assert torch.equal(torch.load(tmp_path / "prob.npy"), torch.load(files["prob"]))


def test_export_pickle_follows_a_split_file(golden, tmp_path):
    path, info = golden
    files = golden_paths(path)
    store = tmp_path / "store"
    succeeds("import", "--store", store, "--pickle", files["pickle"],
             "--codebook-size", info["codebook_size"])
    chosen = [info["names"][3], info["names"][0], info["names"][5]]
    split = tmp_path / "subset.txt"
    split.write_text("".join(f"{name}\n" for name in chosen))
    succeeds("export-pickle", store, tmp_path / "subset.pkl", "--split", split)
    expected = load_pickle(files["pickle"])
    assert_all_data_equal(load_pickle(tmp_path / "subset.pkl"), {
        "text_data": {name: expected["text_data"][name] for name in chosen},
        "code_data": {name: expected["code_data"][name] for name in chosen},
        "file_names": chosen})

    split.write_text(f"{info['names'][0]}\nnot/in the store\n")
    fails("export-pickle", store, tmp_path / "bad.pkl", "--split", split, says="'not/in the store'")
    assert not (tmp_path / "bad.pkl").exists()


def test_a_wrong_prob_file_is_refused(golden, tmp_path):
    path, info = golden
    files = golden_paths(path)
    prob = torch.load(files["prob"])
    prob[0] = torch.nextafter(prob[0], torch.tensor(1.0))   # one unit in the last place off
    torch.save(prob, tmp_path / "wrong_prob.npy")
    store = tmp_path / "store"
    args = ("import", "--store", store, "--codes-dir", files["codes"], "--texts-dir", files["texts"],
            "--split", files["split"])
    fails(*args, "--prob", tmp_path / "wrong_prob.npy", says="prob file disagrees")
    assert not store.exists()
    fails(*args, "--prob", files["prob"], "--codebook-size", info["codebook_size"] + 1,
          says="disagrees with the prob file")
    fails(*args, says="--codebook-size")   # neither a size nor a prob file
    assert not store.exists()


def test_missing_legacy_files_and_bad_option_mixes_are_clear_errors(golden, tmp_path):
    path, info = golden
    files = golden_paths(path)
    split = tmp_path / "split.txt"
    split.write_text(f"{info['names'][0]}\nno/such motion\n")
    store = tmp_path / "store"
    fails("import", "--store", store, "--codes-dir", files["codes"], "--texts-dir", files["texts"],
          "--split", split, "--codebook-size", info["codebook_size"], says="no/such motion.npy")
    fails("import", "--store", store, "--pickle", files["pickle"], "--split", files["split"],
          says="either --pickle")
    fails("import", "--store", store, "--codes-dir", files["codes"], says="--texts-dir")
    assert not store.exists()


# ---------------------------------------------------------------------------------------------
# round trip: import(export(store)) equals the store

NAMES = ["humanml/000001", "aist/dance/clip 2", "idea400/a b/c", "plain"]
TEXTS = [["a person walks\n"], ["jumps\n", "\n"], ["turns#x#0.0#0.0\n", "last line without newline"],
         []]


def synthetic_store(path, backend, dtype="int32", codebook_size=70):
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, codebook_size, size, dtype=dtype) for size in (5, 1, 9, 3)]
    with TokenStore.create(path, codebook_size, backend=backend,
                           meta={"legacy_code_dtype": dtype}) as store:
        store.append(NAMES, codes, TEXTS)
        store.commit()
    return path


@pytest.mark.parametrize("backend, dtype", [("zarr", "int32"), ("hdf5", "int64")])
def test_import_of_the_exports_equals_the_store(tmp_path, backend, dtype):
    original = synthetic_store(tmp_path / f"original.{backend}", backend, dtype)

    succeeds("export-pickle", original, tmp_path / "all_data.pkl")
    via_pickle = tmp_path / f"via_pickle.{backend}"
    succeeds("import", "--store", via_pickle, "--pickle", tmp_path / "all_data.pkl",
             "--codebook-size", 70, "--backend", backend)
    assert_stores_equal(original, via_pickle)

    codes, texts, split = tmp_path / "codes", tmp_path / "texts", tmp_path / "all.txt"
    succeeds("export-npy", original, codes)
    succeeds("export-prob", original, tmp_path / "prob.npy")
    assert np.load(codes / "aist/dance/clip 2.npy").dtype == np.dtype(dtype)
    for name, lines in zip(NAMES, TEXTS):
        (texts / name).parent.mkdir(parents=True, exist_ok=True)
        (texts / f"{name}.txt").write_text("".join(lines))
    split.write_text("".join(f"{name}\n" for name in NAMES))
    via_files = tmp_path / f"via_files.{backend}"
    succeeds("import", "--store", via_files, "--codes-dir", codes, "--texts-dir", texts,
             "--split", split, "--prob", tmp_path / "prob.npy", "--backend", backend)
    assert_stores_equal(original, via_files)


def test_names_that_would_leave_the_output_folder_are_refused(tmp_path):
    data = {"text_data": {"../escape": ["x\n"]},
            "code_data": {"../escape": np.zeros((1, 2), np.int32)}, "file_names": ["../escape"]}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(data))
    fails("import", "--store", tmp_path / "store", "--pickle", tmp_path / "evil.pkl",
          "--codebook-size", 8, says="'../escape'")
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------
# an untrusted pickle cannot run code

class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "the_command_ran"
    payload = tmp_path / "all_data.pkl"
    payload.write_bytes(pickle.dumps({"text_data": {}, "code_data": {},
                                      "file_names": [RunsACommand(marker)]}))
    fails("import", "--store", tmp_path / "store", "--pickle", payload, "--codebook-size", 8,
          says="refusing to load posix.system")
    assert not marker.exists() and not (tmp_path / "store").exists()


def test_a_disallowed_global_nested_in_a_dict_is_refused(tmp_path):
    payload = tmp_path / "all_data.pkl"
    payload.write_bytes(pickle.dumps({
        "text_data": {"a": [collections.OrderedDict(line="x\n")]},
        "code_data": {"a": np.zeros((1, 2), np.int32)}, "file_names": ["a"]}))
    fails("import", "--store", tmp_path / "store", "--pickle", payload, "--codebook-size", 8,
          says="refusing to load collections.OrderedDict")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_arrays_load_under_every_pickle_protocol(tmp_path, protocol):
    data = {"text_data": {"a": ["x\n", "\n"]}, "code_data": {"a": np.arange(4).reshape(1, 4)},
            "file_names": ["a"]}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    assert_all_data_equal(read_all_data(tmp_path / "p.pkl"), data)


# ---------------------------------------------------------------------------------------------
# the arithmetic behind the probability file, where it matters: past 2**24 tokens

def test_probabilities_use_the_originals_float32_division():
    counts = np.zeros(66, np.int64)
    counts[:64] = np.arange(64) * 1_000_003 + 7   # total far past 2**24: float32 rounds counts
    counts[64] = 5_000                             # end tokens; pad stays 0
    total = counts.sum()
    probs = legacy_probs(counts)
    assert probs.dtype == torch.float32
    as_the_original = counts.astype(np.float32) / np.float32(total)
    assert np.array_equal(probs.numpy(), as_the_original)
    assert not np.array_equal(probs.numpy(), (counts / total).astype(np.float32))


def test_export_without_a_legacy_dtype_is_a_clear_error(tmp_path):
    with TokenStore.create(tmp_path / "store", 8) as store:
        store.append(["a"], [np.array([1, 2], np.int32)], [["x\n"]])
    fails("export-npy", tmp_path / "store", tmp_path / "codes", says="legacy_code_dtype")


# ---------------------------------------------------------------------------------------------
# hostile pickles and planted files: bounded memory, no file written through a symlink

class Reduces:
    """Pickles as `callable(*args)` (then `state`, if given): what a hostile pickle can declare."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


_RECONSTRUCT = np.empty(0).__reduce__()[0]
HUGE = (1, 2**28)  # 1 GiB of int32 codes
BOMBS = {
    "ndarray called": Reduces(np.ndarray, (HUGE, "i4")),
    "_reconstruct shape": Reduces(_RECONSTRUCT, (np.ndarray, HUGE, "i4")),
    "object array state": Reduces(_RECONSTRUCT, (np.ndarray, (0,), "b"),
                                  (1, HUGE, np.dtype("O"), False, [1, 2])),
    "dtype too wide": Reduces(np.ndarray, ((1, 1), np.dtype(("i4", (2**28,))))),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_pickle_declaring_a_huge_array_is_refused_without_allocating_it(tmp_path, bomb):
    """In a child process forked from the preforked server, which resets its own peak memory
    (VmHWM: per address space, set back to the current resident size by writing 5 to
    /proc/self/clear_refs) before the import and reports how far the peak rose at exit: the old
    unpickler took 1 GiB for each (or crashed on the object array)."""
    import sys

    payload = tmp_path / "bomb.pkl"
    payload.write_bytes(pickle.dumps({"text_data": {"a": ["x\n"]}, "file_names": ["a"],
                                      "code_data": {"a": BOMBS[bomb]}}, protocol=2))
    assert payload.stat().st_size < 400
    peak = tmp_path / "peak"
    child = textwrap.dedent(f"""
        import atexit, runpy, sys
        def kib(field):
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
        def report():
            with open({str(peak)!r}, "w") as out:
                out.write(str(kib("VmHWM") - start))
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        start = kib("VmRSS")
        atexit.register(report)
        sys.argv = ["cli", "import", "--store", {str(tmp_path / "store")!r}, "--pickle",
                    {str(payload)!r}, "--codebook-size", "8"]
        runpy.run_module("cli", run_name="__main__")
    """)
    result = preforked.run([sys.executable, "-c", child], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    err = result.stderr
    assert err.startswith(f"error: {payload}: ") and len(err.strip().splitlines()) == 1, err
    rise_kib = int(peak.read_text())
    assert rise_kib < 512 * 1024, "the child's peak memory rose near the declared GiB"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("verb, name", [("export-pickle", "all_data.pkl"),
                                        ("export-prob", "prob.pt")])
def test_exports_never_write_through_a_planted_symlink(tmp_path, verb, name):
    with TokenStore.create(tmp_path / "store", 8, meta={"legacy_code_dtype": "int32"}) as store:
        store.append(["a"], [np.array([1, 2], np.int32)], [["x\n"]])
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for planted in (out / f"{name}.tmp", out / name):
        planted.symlink_to(victim)
    succeeds(verb, tmp_path / "store", out / name)
    assert victim.read_text() == "precious"
    assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted([name, f"{name}.tmp"])


def test_export_npy_never_writes_through_a_planted_symlink(tmp_path):
    with TokenStore.create(tmp_path / "store", 8, meta={"legacy_code_dtype": "int32"}) as store:
        store.append(["a"], [np.array([1, 2], np.int32)], [["x\n"]])
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "a.npy").symlink_to(victim)
    result = tokstore("export-npy", tmp_path / "store", tmp_path / "codes")
    assert victim.read_text() == "precious"
    assert str(tmp_path / "codes" / "a.npy") in one_error_line(result)


@pytest.mark.parametrize("verb", ["export-pickle", "export-prob"])
def test_a_failed_export_leaves_no_temporary_file(tmp_path, verb):
    with TokenStore.create(tmp_path / "store", 8, meta={"legacy_code_dtype": "int32"}) as store:
        store.append(["a"], [np.array([1, 2], np.int32)], [["x\n"]])
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "taken"
    target.mkdir()  # a directory where the file should go: the rename fails
    result = tokstore(verb, tmp_path / "store", target)
    assert one_error_line(result).startswith(f"error: {target}: ")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["taken"]


@pytest.mark.parametrize("what", ["pickle", "prob"])
def test_import_refuses_a_fifo_at_once(tmp_path, what):
    """The old import blocked forever opening a FIFO given as a legacy file."""
    import sys

    codes, texts = tmp_path / "codes", tmp_path / "texts"
    codes.mkdir(), texts.mkdir()
    np.save(codes / "a.npy", np.zeros((1, 3), np.int32))
    (texts / "a.txt").write_text("x\n")
    (tmp_path / "split.txt").write_text("a\n")
    fifo = {"pickle": tmp_path / "p.pkl", "prob": tmp_path / "prob.pt"}
    fifo[what].unlink(missing_ok=True)
    os.mkfifo(fifo[what])
    args = (["--pickle", fifo[what], "--codebook-size", 8] if what == "pickle" else
            ["--codes-dir", codes, "--texts-dir", texts, "--split", tmp_path / "split.txt",
             "--codebook-size", 8] + (["--prob", fifo[what]] if what == "prob" else []))
    result = preforked.run([sys.executable, "-m", "cli", "import", "--store", tmp_path / "s.zarr",
                             *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env=subprocess_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert str(fifo[what]) in line and "not a regular file" in line
    assert not (tmp_path / "s.zarr").exists()


def test_a_code_file_declaring_more_than_it_holds_is_refused(tmp_path):
    """A 128-byte .npy declaring 32 GiB of codes: refused from its header, nothing allocated."""
    codes, texts = tmp_path / "codes", tmp_path / "texts"
    codes.mkdir(), texts.mkdir()
    with open(codes / "a.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<i4", "fortran_order": False, "shape": (1, 2**33)})
    (texts / "a.txt").write_text("x\n")
    (tmp_path / "split.txt").write_text("a\n")
    fails("import", "--store", tmp_path / "s.zarr", "--codes-dir", codes, "--texts-dir", texts,
          "--split", tmp_path / "split.txt", "--codebook-size", 8, says="truncated .npy")
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------------------------
# damaged files: each reader catches exactly what its parser raises, and nothing escapes that

PICKLE_SAMPLE = {"text_data": {"a": ["x\n", "y"]}, "file_names": ["a"],
                 "code_data": {"a": np.arange(6, dtype=np.int32).reshape(1, 6)}}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_damaged_pickle_loads_or_is_a_legacy_format_error(tmp_path, protocol):
    from file_mutations import damaged_copies, outcomes_of

    from tokstore.legacy import LegacyFormatError, safe_load_pickle

    # (seed=protocol gave protocol 5 a LONG_BINPUT of index 680,825,748, for which CPython's
    # unpickler grows its memo table to 5 GB: a memory problem of its own, not an exception one)
    copies = damaged_copies(pickle.dumps(PICKLE_SAMPLE, protocol=protocol), 150, seed=protocol + 10)
    assert outcomes_of(safe_load_pickle, tmp_path / "all_data.pkl", copies,
                       LegacyFormatError) == {"read", "refused"}


def test_a_damaged_prob_file_or_code_file_is_a_legacy_format_error(tmp_path):
    from file_mutations import damaged_copies, outcomes_of

    from tokstore.legacy import LegacyFormatError, _legacy_samples_from_dirs, load_prob

    prob = tmp_path / "prob.pth"
    torch.save(legacy_probs(np.arange(10)), prob)
    copies = damaged_copies(prob.read_bytes(), 300, seed=2)
    assert outcomes_of(load_prob, prob, copies, LegacyFormatError) == {"read", "refused"}

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a caption\n")
    (tmp_path / "codes").mkdir()
    code_file = tmp_path / "codes" / "a.npy"
    np.save(code_file, np.arange(6, dtype=np.int64).reshape(1, 6))
    copies = damaged_copies(code_file.read_bytes(), 300, seed=3)
    read = lambda path: list(_legacy_samples_from_dirs(path.parent, tmp_path / "texts", ["a"]))  # noqa: E731
    assert outcomes_of(read, code_file, copies, LegacyFormatError) == {"read", "refused"}


def test_a_failed_cleanup_warns_and_keeps_the_error_that_caused_it(tmp_path, monkeypatch):
    """An import stopped half-way removes its new store; when even that fails, the import's own
    error still propagates, with a LeftoverFileWarning naming what was left."""
    import shutil
    import warnings

    import tokstore.legacy as legacy

    payload = tmp_path / "all_data.pkl"
    payload.write_bytes(pickle.dumps({
        "text_data": {"a": ["x\n"], "b": ["y\n"]}, "file_names": ["a", "b"],
        "code_data": {"a": np.zeros((1, 2), np.int32), "b": np.zeros((1, 2), np.int64)}}))

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    (tmp_path / "a_file").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no store was made, so there is nothing to warn about
        with pytest.raises(OSError):
            legacy.import_pickle(tmp_path / "a_file" / "store", payload, 8, progress=False)

    monkeypatch.setattr(shutil, "rmtree", refuse)
    store = tmp_path / "store"
    with pytest.warns(legacy.LeftoverFileWarning, match=f"{store} is left behind: removing it "
                      "after LegacyFormatError failed"), \
            pytest.raises(legacy.LegacyFormatError, match="codes are int64, earlier ones int32"):
        legacy.import_pickle(store, payload, codebook_size=8, progress=False)
    assert store.exists()

    def write_then_fail(f):
        f.write(b"half")
        raise ValueError("the writer gave up")

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.warns(legacy.LeftoverFileWarning, match=r"\.tokstore-.*\.tmp is left behind"), \
            pytest.raises(ValueError, match="the writer gave up"):
        legacy.replace_atomically(tmp_path / "out.pkl", write_then_fail)
    assert not (tmp_path / "out.pkl").exists()
