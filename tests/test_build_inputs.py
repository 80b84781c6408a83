"""Bad input through `tokstore build`: under --on-error fail a one-line message naming the file and
the problem, exit 1, and an existing store's committed samples intact; under skip the entry is
left out, recorded in the store's meta and printed."""
from __future__ import annotations

import numpy as np
import pytest
from build_helpers import build_args, contents, run_cli, tiny_built, tiny_setup

from tokstore.synthetic import corrupt

N = 24
VICTIM = 17  # in the second half: the first half is already in the store
# defect -> what the one-line message says
ENTRY_DEFECTS = {
    "missing_motion": "missing motion file",
    "wrong_features": "271 features, expected 272",
    "nan": "NaN or Inf values",
    "inf": "NaN or Inf values",
    "too_short": "1 frames, fewer than one unit (2)",
    "truncated": "truncated .npy",
    "unreadable": "unreadable .npy",
    "missing_caption": "missing caption file",
    "bad_utf8": "caption file is not valid UTF-8",
    "duplicate": "duplicate name in split",
}


@pytest.fixture
def half_built(copy_of_made, tmp_path):
    """A dataset whose store already holds the first half of the split (the split then grew)."""
    dataset, checkpoint, store = tiny_built(copy_of_made, tmp_path, n=N, first=N // 2)
    return dataset, checkpoint, store, contents(store)


def assert_intact(store, before):
    after = contents(store)
    assert after["check"] == []
    n = len(before["names"])
    assert after["names"][:n] == before["names"]
    assert all(np.array_equal(a, b) for a, b in zip(after["codes"], before["codes"]))
    assert after["texts"][:n] == before["texts"]


@pytest.mark.parametrize("defect", ENTRY_DEFECTS)
def test_fail_names_the_file_and_keeps_the_store(half_built, defect):
    dataset, checkpoint, store, before = half_built
    victim = dataset.names[VICTIM]
    path = corrupt(dataset, defect, victim)
    result = run_cli(*build_args(dataset, checkpoint, store, "--window", "4"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if str(path) in line]
    assert lines and ENTRY_DEFECTS[defect] in lines[0]
    assert_intact(store, before)
    after = contents(store)
    if defect in ("nan", "inf"):  # found while loading: the windows before it were committed
        assert after["names"] == dataset.names[:16]
        assert "committed samples are kept" in result.output
    else:  # found by the preflight: nothing encoded
        assert after["names"] == before["names"]
        assert "preflight found 1 problem(s)" in result.output


@pytest.mark.parametrize("defect", ENTRY_DEFECTS)
def test_skip_records_and_prints(half_built, defect):
    dataset, checkpoint, store, before = half_built
    victim = dataset.names[VICTIM]
    path = corrupt(dataset, defect, victim)
    result = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip", "--window", "4"))
    assert result.exit_code == 0, result.output
    assert_intact(store, before)
    after = contents(store)
    expected = dataset.names if defect == "duplicate" else dataset.names[:VICTIM] + dataset.names[VICTIM + 1:]
    assert after["names"] == expected
    [record] = after["skipped"]
    assert record["name"] == victim and record["path"] == str(path)
    assert ENTRY_DEFECTS[defect] in record["reason"]
    assert "skipped 1:" in result.output
    assert f"  {victim}: {path}: {record['reason']}" in result.output
    assert np.array_equal(after["counts"][:-2], np.bincount(np.concatenate(after["codes"]),
                                                            minlength=64000))
    # the finished build is a no-op that still reports what it skipped
    again = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert again.exit_code == 0 and "already complete" in again.output and "skipped 1:" in again.output


def test_every_problem_is_reported_at_once(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=N)
    defects = ["missing_motion", "wrong_features", "too_short", "truncated", "missing_caption",
               "bad_utf8"]
    paths = [corrupt(dataset, d, dataset.names[2 + 3 * i]) for i, d in enumerate(defects)]
    store = tmp_path / "s.zarr"
    result = run_cli(*build_args(dataset, checkpoint, store))
    assert result.exit_code == 1
    assert f"preflight found {len(defects)} problem(s) in {N} split entries" in result.output
    for path, defect in zip(paths, defects):
        assert any(str(path) in line and ENTRY_DEFECTS[defect] in line
                   for line in result.output.splitlines())
    assert not store.exists()  # nothing encoded, nothing created
    skip = run_cli(*build_args(dataset, checkpoint, store, "--on-error", "skip"))
    assert skip.exit_code == 0
    assert [s["path"] for s in contents(store)["skipped"]] == [str(p) for p in paths]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("defect, message", [
    ("empty_split", "split is empty"),
    ("bad_stats", "mean has shape (273,), expected (272,)"),
])
def test_errors_that_skipping_cannot_help(half_built, defect, message, on_error):
    dataset, checkpoint, store, before = half_built
    path = corrupt(dataset, defect)
    result = run_cli(*build_args(dataset, checkpoint, store, "--on-error", on_error))
    assert result.exit_code == 1
    assert f"{path}: {message}" in result.output
    assert contents(store)["names"] == before["names"]


def test_nothing_left_after_skipping(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=2)
    for name in dataset.names:
        corrupt(dataset, "missing_caption", name)
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr", "--on-error", "skip"))
    assert result.exit_code == 1 and "no motion left to encode" in result.output


# ---- hostile names and files: refused by name and line, never read, never hung on ------------

def one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


@pytest.mark.parametrize("bad, why", [
    ("../../evil", "'..'"), ("a/../../evil", "'..'"), ("/etc/passwd", "absolute"),
    ("a/./b", "'.'"), ("a//b", "empty part"), ("a\0b", "NUL"), ("x" * 300, "longer than"),
])
def test_a_split_name_that_would_leave_the_dataset_is_refused_by_line(tmp_path, bad, why):
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    outside = tmp_path / "evil.npy"  # what ../../evil would read from the motion folder
    np.save(outside, np.zeros((8, 272), np.float32))
    split = dataset.layout.split_file
    names = dataset.names[:2] + [bad] + dataset.names[2:]
    split.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    store = tmp_path / "s.zarr"
    for on_error in ("fail", "skip"):
        line = one_error_line(run_cli(*build_args(dataset, checkpoint, store, "--on-error",
                                                  on_error)))
        assert line.startswith(f"error: {split}:3: ") and why in line
        assert not store.exists()


def test_a_split_with_a_utf8_bom_names_its_first_entry_correctly(tmp_path):
    dataset, checkpoint = tiny_setup(tmp_path, n=4)
    split = dataset.layout.split_file
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())
    store = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, store)).exit_code == 0
    assert contents(store)["names"] == dataset.names


def _plant(dataset, victim: int, kind: str, what: str) -> str:
    """Replace an entry's caption or motion file by a FIFO, /dev/zero, a directory or a huge file."""
    import os

    name = dataset.names[victim]
    path = dataset.layout.text_path(name) if kind == "caption" else dataset.layout.motion_path(name)
    os.unlink(path)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "device":
        os.symlink("/dev/zero", path)
    elif what == "directory":
        os.mkdir(path)
    else:  # a sparse 64 GiB caption
        with open(path, "wb") as f:
            f.truncate(64 << 30)
    return path


PLANTS = [("caption", "fifo", "not a regular file"), ("caption", "device", "not a regular file"),
          ("caption", "directory", "not a regular file"), ("caption", "huge", "larger than"),
          ("motion", "fifo", "not a regular file"), ("motion", "device", "not a regular file")]


@pytest.fixture(scope="module")
def planted_builds(tmp_path_factory):
    """Every plant in one dataset (each in an entry of its own), built once with --on-error fail
    and once with skip, each in a child process with a timeout and a memory limit: {plant: its
    path}, {on_error: (finished process, store)}."""
    import preforked
    from build_helpers import CLI, REPO, subprocess_env

    tmp_path = tmp_path_factory.mktemp("planted")
    dataset, checkpoint = tiny_setup(tmp_path, n=N)
    paths = {plant: _plant(dataset, 3 + 3 * k, *plant[:2]) for k, plant in enumerate(PLANTS)}
    runs = {}
    for on_error in ("fail", "skip"):
        store = tmp_path / f"{on_error}.zarr"
        runs[on_error] = preforked.run(
            CLI + build_args(dataset, checkpoint, store, "--on-error", on_error), cwd=REPO,
            env=subprocess_env(), capture_output=True, text=True, timeout=120,
            memory_limit=8 << 30), store
    return paths, runs


@pytest.mark.parametrize("kind, what, reason", PLANTS)
def test_devices_fifos_and_huge_captions_are_refused_at_once(planted_builds, kind, what, reason):
    """The old build hung on a FIFO and read /dev/zero until MemoryError. Under fail, a line
    names each planted file and why; under skip, each is a skipped entry and the rest builds."""
    paths, runs = planted_builds
    path = paths[(kind, what, reason)]
    (failed, _), (skipped, store) = runs["fail"], runs["skip"]
    assert "Traceback" not in failed.stderr and "Traceback" not in skipped.stderr
    assert failed.returncode == 1
    assert any(str(path) in line and reason in line for line in failed.stderr.splitlines())
    assert skipped.returncode == 0, skipped.stderr
    records = contents(store)["skipped"]
    assert len(records) == len(PLANTS)
    [record] = [r for r in records if r["path"] == str(path)]
    assert reason in record["reason"]


# --- the model the command line names -------------------------------------------------------

@pytest.mark.parametrize("preset, flags, input_dim", [
    ("motionmillion", [], None),
    ("motionmillion", ["--width", "32", "--code-dim=32", "--output_emb_width", "32"], None),
    ("t2m-gpt", ["--quantizer", "FSQ", "--nb-code", "1024", "--use_patcher"], 263),
    ("t2m-gpt", ["--input_dim", "300"], 263),  # an explicit --input-dim beats the layout's
    (None, ["--nb-code", "65536", "--quantizer", "FSQ", "--down-t", "1", "--vq-norm", "LN"], 251),
    (None, ["--vq-norm", "None"], None),
])
def test_model_config_is_the_preset_with_the_flags_given_replaced(preset, flags, input_dim):
    """The same config as parsing the preset's own flags followed by the given ones (how it was
    merged before: through flag strings), the layout's feature count unless --input-dim says."""
    from tokstore.build import model_config
    from vqvae import VQVAEConfig

    merged = model_config(preset, flags, input_dim)
    through_flags = VQVAEConfig.from_flags((VQVAEConfig.preset(preset).to_flags() if preset else [])
                                           + flags)
    given_dim = any(f.startswith(("--input-dim", "--input_dim")) for f in flags)
    expected_dim = through_flags.input_dim if given_dim or input_dim is None else input_dim
    assert merged.to_dict() == {**through_flags.to_dict(), "input_dim": expected_dim}


def test_model_config_refuses_no_model_and_bad_flags():
    from tokstore.build import BuildError, model_config
    from vqvae import VQVAEError

    with pytest.raises(BuildError, match="name the model"):
        model_config(None, [])
    with pytest.raises(VQVAEError, match="unknown model flag '--batch-size'"):
        model_config("motionmillion", ["--batch-size", "4"])
    with pytest.raises(VQVAEError, match="output_emb_width \\(512\\) must equal code_dim \\(32\\)"):
        model_config("motionmillion", ["--code-dim", "32"])
