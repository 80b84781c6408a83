"""tokstore.sources: layouts, split/captions/stats, preflight."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokstore.errors import PreflightError, SourceError
from tokstore.sources import (SourceLayout, load_stats, preflight, read_captions, read_split,
                              stats_sha256)
from tokstore.synthetic import corrupt, make_dataset

UNIT = 4


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 24, lengths=(8, 40))


# --- layouts ---------------------------------------------------------------------------------

def test_motionmillion_layout_resolves_paths(tmp_path):
    lay = SourceLayout.motionmillion(tmp_path, motion_type="vector_263", text_type="captions",
                                     version="v2/all")
    assert lay.motion_dir == tmp_path / "motion_data" / "vector_263"
    assert lay.text_dir == tmp_path / "captions"
    assert lay.split_file == tmp_path / "split" / "v2" / "all" / "all.txt"
    assert lay.mean_file == tmp_path / "mean_std" / "vector_263" / "mean.npy"
    assert lay.std_file == tmp_path / "mean_std" / "vector_263" / "std.npy"
    expected = f"{tmp_path}/motion_data/vector_263/aist/dance/a b.npy"
    assert lay.motion_path("aist/dance/a b") == expected
    assert lay.text_path("x/y") == f"{tmp_path}/captions/x/y.txt"
    default = SourceLayout.motionmillion(tmp_path)
    assert default.split_file == tmp_path / "split/version1/t2m_60_300/all.txt"
    assert default.motion_dir == tmp_path / "motion_data/vector_272"
    assert default.input_dim is None


@pytest.mark.parametrize("dataname,dim", [("t2m", 263), ("kit", 251)])
def test_humanml_kit_layout(tmp_path, dataname, dim):
    lay = SourceLayout.humanml(tmp_path, dataname)
    assert (lay.motion_dir, lay.text_dir) == (tmp_path / "new_joint_vecs", tmp_path / "texts")
    assert lay.split_file == tmp_path / "all.txt"
    assert (lay.mean_file, lay.std_file) == (tmp_path / "Mean.npy", tmp_path / "Std.npy")
    assert lay.input_dim == dim
    assert SourceLayout.resolve(tmp_path, dataname=dataname) == lay


def test_unknown_dataname(tmp_path):
    with pytest.raises(SourceError, match="unknown dataname 'humanml'"):
        SourceLayout.resolve(tmp_path, dataname="humanml")


def test_overrides_replace_only_what_is_given(tmp_path):
    lay = SourceLayout.resolve(tmp_path, split=tmp_path / "s.txt", std="/x/std.npy")
    base = SourceLayout.motionmillion(tmp_path)
    assert lay.split_file == tmp_path / "s.txt"
    assert lay.std_file == Path("/x/std.npy")
    assert (lay.motion_dir, lay.text_dir, lay.mean_file) == (base.motion_dir, base.text_dir,
                                                             base.mean_file)
    kit = SourceLayout.resolve(tmp_path, dataname="kit", motion_dir="/m", text_dir="/t")
    assert (kit.motion_dir, kit.text_dir, kit.input_dim) == (Path("/m"), Path("/t"), 251)


def test_explicit_paths_without_root(tmp_path):
    paths = dict(split="/a/s.txt", mean="/a/m.npy", std="/a/s.npy", motion_dir="/a/mo",
                 text_dir="/a/tx")
    lay = SourceLayout.resolve(None, **paths)
    assert (lay.split_file, lay.motion_dir) == (Path("/a/s.txt"), Path("/a/mo"))
    with pytest.raises(SourceError, match="missing: mean_file, text_dir"):
        SourceLayout.resolve(None, split="/a/s.txt", std="/a/s.npy", motion_dir="/a/mo")


def test_provenance_is_json_safe_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lay = SourceLayout.humanml("rel", "t2m")
    d = json.loads(json.dumps(lay.to_dict()))
    assert d["motion_dir"] == str(tmp_path / "rel" / "new_joint_vecs")
    assert d["input_dim"] == 263
    text = lay.describe()
    assert str(tmp_path / "rel" / "Mean.npy") in text and "split_file" in text


# --- split, captions, statistics ------------------------------------------------------------

def test_read_split(tmp_path):
    path = tmp_path / "all.txt"
    path.write_text("humanml/000001\n\n  aist/dance/gBR 01 \r\n\t\nanimation/sub dir/x\n  \n")
    assert read_split(path) == ["humanml/000001", "aist/dance/gBR 01", "animation/sub dir/x"]
    with pytest.raises(SourceError, match="split file not found"):
        read_split(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [
    b"a person walks.\nthen stops.\n\n",     # trailing blank line
    b"one line, no final newline",
    b"windows\r\nline endings\r\n",
    b"\n\nleading blanks\n",
    "unicode caf\u00e9 \u2014 ok\n".encode(),
    b"",
])
def test_read_captions_is_readlines(tmp_path, content):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with open(path) as f:
        assert read_captions(path) == f.readlines()


def test_read_captions_golden(golden):
    directory, info = golden
    for name in info["names"]:
        path = directory / "dataset" / "texts" / f"{name}.txt"
        with open(path) as f:
            assert read_captions(path) == f.readlines()


def test_load_stats(dataset):
    lay = dataset.layout
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (272,)
    np.testing.assert_array_equal(mean, np.load(lay.mean_file))
    with pytest.raises(SourceError, match=r"mean has shape \(272,\), expected \(263,\)"):
        load_stats(lay.mean_file, lay.std_file, 263)
    with pytest.raises(SourceError, match="std file not found"):
        load_stats(lay.mean_file, lay.std_file.with_name("nope.npy"), 272)
    zero = std.copy()
    zero[5] = 0
    np.save(lay.std_file, zero)
    with pytest.raises(SourceError, match="1 zero or negative"):
        load_stats(lay.mean_file, lay.std_file, 272)
    corrupt(dataset, "bad_stats")
    with pytest.raises(SourceError, match=r"mean has shape \(273,\), expected \(272,\)"):
        load_stats(lay.mean_file, lay.std_file, 272)


def test_stats_sha256_tracks_content(dataset):
    lay = dataset.layout
    first = stats_sha256(lay.mean_file, lay.std_file)
    assert first == stats_sha256(lay.mean_file, lay.std_file) and len(first) == 64
    assert stats_sha256(lay.std_file, lay.mean_file) != first
    std = np.load(lay.std_file)
    std[0] *= 1.0000001
    np.save(lay.std_file, std)
    assert stats_sha256(lay.mean_file, lay.std_file) != first


# --- preflight ------------------------------------------------------------------------------

def test_preflight_clean(dataset):
    names = read_split(dataset.layout.split_file)
    pf = preflight(dataset.layout, names, 272, UNIT)
    assert pf.ok and pf.n_names == 24 and pf.problems == []
    assert [e.name for e in pf.entries] == names
    assert [e.index_in_split for e in pf.entries] == list(range(24))
    assert [e.frames for e in pf.entries] == dataset.frames
    assert all(e.cropped_frames == (e.frames // UNIT) * UNIT for e in pf.entries)
    assert pf.frames == sum(e.cropped_frames for e in pf.entries)
    pf.raise_if_problems()


def test_preflight_reports_every_defect_at_once(dataset):
    lay, names = dataset.layout, dataset.names
    defects = ["missing_motion", "wrong_features", "too_short", "truncated", "unreadable",
               "missing_caption", "bad_utf8", "nan", "inf", "duplicate"]
    victims = dict(zip(defects, names))
    for defect, name in victims.items():
        corrupt(dataset, defect, name)
    np.save(lay.motion_path(names[12]), np.zeros((50, 272), np.int64))
    np.save(lay.motion_path(names[13]), np.zeros((50, 272, 1), np.float32))
    corrupt(dataset, "missing_caption", victims["wrong_features"])  # two problems, one entry

    split = read_split(lay.split_file)
    assert len(split) == 25
    pf = preflight(lay, split, 272, UNIT, threads=3, chunk=4)

    def expect(name, reason, kind="motion"):
        path = lay.motion_path(name) if kind == "motion" else lay.text_path(name)
        hits = [p for p in pf.problems if (p.name, p.path) == (name, path) and reason in p.reason]
        assert len(hits) == 1, (name, reason, pf.problems)

    expect(victims["missing_motion"], "missing motion file")
    expect(victims["wrong_features"], "271 features, expected 272")
    expect(victims["wrong_features"], "missing caption file", "text")
    expect(victims["too_short"], "1 frames, fewer than one unit (4)")
    expect(victims["truncated"], "truncated .npy")
    expect(victims["unreadable"], "unreadable .npy (not a .npy file)")
    expect(victims["missing_caption"], "missing caption file", "text")
    expect(victims["bad_utf8"], "not valid UTF-8", "text")
    expect(names[12], "dtype int64 is not a float type")
    expect(names[13], "shape (50, 272, 1) is not (frames, features)")
    dup = [p for p in pf.problems if "duplicate" in p.reason]
    assert len(dup) == 1 and dup[0].name == victims["duplicate"]
    assert dup[0].path == str(lay.split_file) and "entries 10 and 25" in dup[0].reason
    assert len(pf.problems) == 11  # NaN/Inf are found when loading, not from headers

    bad = {victims[d] for d in defects[:7]} | {names[12], names[13]}
    assert [e.name for e in pf.entries] == [n for n in names if n not in bad]
    in_split_order = [names[0], names[1], names[1], *names[2:7], names[12], names[13], names[9]]
    assert [p.name for p in pf.problems] == in_split_order
    with pytest.raises(PreflightError) as info:
        pf.raise_if_problems()
    assert info.value.problems == pf.problems
    message = str(info.value)
    assert "11 problem(s) in 25 split entries" in message
    assert all(str(p) in message for p in pf.problems)


def unclosed_header(path) -> None:
    """The .npy at `path` with its header dict's closing brace gone: numpy's header parser then
    raises tokenize.TokenError, neither a ValueError nor a SyntaxError."""
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw.replace(b"}", b" ", 1))


def test_an_unparsable_npy_header_is_a_problem_not_a_crash(dataset):
    lay, names = dataset.layout, dataset.names
    unclosed_header(lay.motion_path(names[3]))
    pf = preflight(lay, names, 272, UNIT)
    assert [(p.name, p.path) for p in pf.problems] == [(names[3], lay.motion_path(names[3]))]
    assert pf.problems[0].reason.startswith("unreadable .npy (cannot parse the header")
    assert len(pf.entries) == len(names) - 1


def test_preflight_problems_in_split_order(dataset):
    lay, names = dataset.layout, dataset.names
    for name in (names[20], names[3], names[11]):
        corrupt(dataset, "missing_motion", name)
    corrupt(dataset, "bad_utf8", names[3])
    pf = preflight(lay, names, 272, UNIT, threads=4, chunk=2)
    assert [(p.name, p.reason) for p in pf.problems] == [
        (names[3], "missing motion file"), (names[3], pf.problems[1].reason),
        (names[11], "missing motion file"), (names[20], "missing motion file")]
    assert Path(pf.problems[1].path).suffix == ".txt"


def test_preflight_threads_do_not_change_the_result(dataset):
    corrupt(dataset, "truncated", dataset.names[5])
    one = preflight(dataset.layout, dataset.names, 272, UNIT, threads=1)
    many = preflight(dataset.layout, dataset.names, 272, UNIT, threads=4, chunk=3)
    assert one == many and len(one.problems) == 1


def test_preflight_empty_split(dataset):
    corrupt(dataset, "empty_split")
    names = read_split(dataset.layout.split_file)
    assert names == []
    pf = preflight(dataset.layout, names, 272, UNIT)
    assert not pf.ok and pf.entries == []
    assert [(p.path, p.reason) for p in pf.problems] == [(str(dataset.layout.split_file),
                                                          "split is empty")]


def test_preflight_missing_directory(dataset):
    lay = SourceLayout.resolve(dataset.root, motion_dir=dataset.root / "nope")
    with pytest.raises(SourceError, match="motion directory not found"):
        preflight(lay, dataset.names, 272, UNIT)
