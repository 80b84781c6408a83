"""Hostile or unlucky inputs through the CLI that the hardening round missed: a statistics file
declaring a huge shape, an export aimed at the store's own files, a pickle's bad name. Each must
end in ONE line naming the file, a non-zero exit, no traceback, and the store left intact."""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import preforked
import pytest
from build_helpers import CLI, REPO, build_args, contents, run_cli, subprocess_env, tiny_setup

from tokstore import TokenStore


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("attacks")
    dataset, checkpoint = tiny_setup(base, n=4)
    store = base / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, store)).exit_code == 0
    h5 = base / "s.h5"
    assert run_cli(*build_args(dataset, checkpoint, h5)).exit_code == 0
    return {"base": base, "dataset": dataset, "checkpoint": checkpoint, "store": store, "h5": h5}


def one_error_line(result, path) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(path) in lines[0], lines[0]
    return lines[0]


def test_mean_declaring_a_huge_shape_is_one_line_not_a_memory_error(world, tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }"
    header = header.ljust(117) + "\n"
    mean = tmp_path / "mean.npy"
    mean.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
                     + b"\0" * 16)
    store = tmp_path / "out.zarr"
    result = run_cli(*build_args(world["dataset"], world["checkpoint"], store, "--mean", mean))
    one_error_line(result, mean)
    assert not store.exists()


@pytest.mark.parametrize("verb", ["export-prob", "export-pickle"])
@pytest.mark.parametrize("target", ["zarr.json", "codes/zarr.json"])
def test_export_into_the_zarr_store_is_refused_and_the_store_survives(world, verb, target):
    before = contents(world["store"])
    out = world["store"] / target
    one_error_line(run_cli(verb, world["store"], out), out)
    after = contents(world["store"])
    assert after["check"] == [] and after["names"] == before["names"]


@pytest.mark.parametrize("verb", ["export-prob", "export-pickle"])
def test_export_onto_the_hdf5_store_itself_is_refused(world, verb):
    before = world["h5"].read_bytes()
    one_error_line(run_cli(verb, world["h5"], world["h5"]), world["h5"])
    assert world["h5"].read_bytes() == before


def test_export_npy_into_the_store_is_refused(world):
    out = world["store"] / "legacy"
    one_error_line(run_cli("export-npy", world["store"], out), out)
    assert not out.exists()


@pytest.mark.parametrize("name", ["../escape", "a\nb"])
def test_pickle_with_a_bad_name_names_the_pickle(world, tmp_path, name):
    bad = tmp_path / "all_data.pkl"
    bad.write_bytes(pickle.dumps({"text_data": {name: ["a#a#0.0#0.0"]},
                                  "code_data": {name: np.array([[1, 2]], dtype=np.int32)},
                                  "file_names": [name]}))
    store = tmp_path / "imported.zarr"
    one_error_line(run_cli("import", "--store", store, "--pickle", bad, "--codebook-size", 64000),
                   bad)
    assert not store.exists()


def test_checkpoint_that_is_a_directory_is_not_called_missing(world, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.mkdir()
    result = run_cli(*build_args(world["dataset"], checkpoint, tmp_path / "out.zarr"))
    line = one_error_line(result, checkpoint)
    assert "not found" not in line and "not a regular file" in line


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_plain_pickle_checkpoint_is_one_line_without_torch_warnings(world, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(pickle.dumps({"net": _Payload()}, protocol=4))
    # a subprocess: pytest would swallow the warnings the user sees
    done = preforked.run(CLI + build_args(world["dataset"], checkpoint, tmp_path / "out.zarr"),
                         capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                         timeout=300)
    assert done.returncode == 1
    assert "payload ran" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "preflight" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(checkpoint) in lines[0], lines


@pytest.mark.parametrize("verb,sig", [("export-npy", "SIGINT"), ("export-npy", "SIGTERM"),
                                      ("export-pickle", "SIGINT"), ("export-pickle", "SIGTERM")])
def test_stop_signal_during_an_export_says_so_in_one_line(world, tmp_path, monkeypatch, verb, sig):
    """Ctrl-C or SIGTERM in the middle of an export (injected at the second sample): was a silent
    exit 130 (or a bare death by SIGTERM) leaving a partial folder that looks complete."""
    import os
    import signal

    from tokstore import legacy

    signum = getattr(signal, sig)
    real, calls = legacy.legacy_codes, []

    def signalling(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return real(*args)

    monkeypatch.setattr(legacy, "legacy_codes", signalling)
    out = tmp_path / ("npy" if verb == "export-npy" else "all_data.pkl")
    result = run_cli(verb, world["store"], out)
    assert result.exit_code == 128 + signum, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.startswith("interrupted by")]
    assert len(lines) == 1 and sig in lines[0] and str(out) in lines[0], result.output
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tokstore-")]
    if verb == "export-pickle":
        assert not out.exists()


# clear the screen, set the title, C1 CSI, right-to-left override, line separator, DEL (a name
# holds no line break)
HOSTILE = "x\x1b[2J\x1b]0;owned\x07\x9b31m\u202egnp.exe\u2028\x7fy"


def test_names_captions_and_paths_from_untrusted_files_cannot_drive_the_terminal(tmp_path):
    """A split or caption file may hold terminal escape sequences, carriage returns, C1 controls
    and bidirectional overrides: every human-readable output prints them as escapes (the --json
    forms are JSON, which a program reads)."""
    store = tmp_path / f"s{HOSTILE}.zarr".replace("/", "")
    with TokenStore.create(store, 16) as s:
        s.append([f"a{HOSTILE}"], [np.arange(3)], [[f"one {HOSTILE}\n"]])
        s.update_meta({"skipped": [{"name": f"g{HOSTILE}", "path": "p", "reason": f"r{HOSTILE}"}]})
    outputs = [run_cli(*args).output for args in (
        ["info", store], ["ls", store], ["show", store, f"a{HOSTILE}"], ["stats", store],
        ["verify", store], ["show", store, f"missing{HOSTILE}"], ["info", f"{store}{HOSTILE}"])]
    for output in outputs:
        assert not set(output) & set("\x1b\x07\r\x9b\u202e\u2028\x7f"), repr(output)
    assert "x\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202egnp.exe\\u2028\\x7fy" in outputs[1]
    assert all(f"{name}x\\x1b[2J" in outputs[0] for name in ("g", "r"))  # the skipped entry
    assert "one x\\x1b[2J" in outputs[2]
    assert "missing" in outputs[5] and "\\x1b" in outputs[6]
    for verb, extra, key in (("ls", [], None), ("show", [f"a{HOSTILE}"], "name"),
                             ("info", [], "skipped")):
        shown = run_cli(verb, store, *extra, "--json").output
        assert not set(shown) & set("\x1b\x07\r\x9b\u202e\u2028\x7f"), repr(shown)
        found = json.loads(shown)  # JSON escapes: the same values
        names = ([row["name"] for row in found] if key is None else
                 [found["name"]] if key == "name" else [e["name"] for e in found["skipped"]])
        assert names == [f"{'g' if key == 'skipped' else 'a'}{HOSTILE}"], names
