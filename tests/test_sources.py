"""tokstore.sources: layouts, split/captions/stats, preflight, batch planning and loading."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokstore.errors import PreflightError, SourceError
from tokstore.sources import (Entry, LoadFailure, MotionBatch, SourceLayout, WindowEnd,
                              iter_batches, load_stats, plan_batches, preflight, read_captions,
                              read_split, stats_sha256)
from tokstore.synthetic import corrupt, make_dataset

UNIT = 4


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 24, lengths=(8, 40))


def reference(entry: Entry, mean, std) -> np.ndarray:
    """The original's per-motion arithmetic: np.load, crop from frame 0, float64 normalize, cast."""
    motion = np.load(entry.motion_path)
    m = (len(motion) // UNIT) * UNIT
    return ((motion[:m] - mean) / std).astype(np.float32)


def collect(entries, mean, std, unit=UNIT, batch_frames=64, window=7, workers=0):
    """{entry_id: (motion, texts)}, the failures, the window ends, and the items in order."""
    items = list(iter_batches(entries, mean, std, unit, batch_frames, window, workers))
    loaded = {}
    for item in items:
        if isinstance(item, MotionBatch):
            for row, entry_id in enumerate(item.entry_ids.tolist()):
                assert entry_id not in loaded
                assert item.names[row] == entries[entry_id].name
                loaded[entry_id] = (item.motions[row], item.texts[row])
    failures = [x for x in items if isinstance(x, LoadFailure)]
    ends = [x for x in items if isinstance(x, WindowEnd)]
    return loaded, failures, ends, items


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


# --- planning -------------------------------------------------------------------------------

def fake_entries(lengths):
    return [Entry(i, f"n{i}", "", "", m, m) for i, m in enumerate(lengths)]


@pytest.mark.parametrize("batch_frames,window", [(64, 7), (1000, 100), (10, 3), (300, 1)])
def test_plan_invariants(batch_frames, window):
    rng = np.random.default_rng(batch_frames)
    entries = fake_entries((rng.integers(1, 9, size=57) * UNIT).tolist())
    plan = plan_batches(entries, batch_frames, window)
    starts = list(range(0, 57, window))
    assert plan.windows == [(s, min(s + window, 57)) for s in starts]
    assert [b.window_id for b in plan.batches] == sorted(b.window_id for b in plan.batches)
    seen = []
    for b in plan.batches:
        start, stop = plan.windows[b.window_id]
        ids = b.entry_ids.tolist()
        assert ids and all(start <= i < stop for i in ids) and ids == sorted(ids)
        assert {entries[i].cropped_frames for i in ids} == {b.length}
        assert len(ids) * b.length <= batch_frames or len(ids) == 1
        seen += ids
    assert sorted(seen) == list(range(57))
    assert {b.window_id for b in plan.batches} == set(range(len(starts)))


def test_plan_fills_batches_up_to_the_budget():
    plan = plan_batches(fake_entries([8] * 10 + [500]), batch_frames=32, window=100)
    assert [len(b.entry_ids) for b in plan.batches] == [4, 4, 2, 1]
    assert plan_batches([], 32, 10).batches == []


# --- loading --------------------------------------------------------------------------------

def test_golden_batches_equal_the_per_motion_reference(golden):
    directory, info = golden
    lay = SourceLayout.motionmillion(directory / "dataset")
    names = read_split(lay.split_file)
    assert names == info["names"]
    unit = info["unit_length"]
    pf = preflight(lay, names, 272, unit)
    assert pf.ok
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    ref_mean, ref_std = np.load(lay.mean_file), np.load(lay.std_file)
    loaded, failures, ends, _ = collect(pf.entries, mean, std, unit, batch_frames=600, window=5)
    assert failures == [] and len(loaded) == len(names)
    for entry_id, (motion, texts) in loaded.items():
        raw = np.load(pf.entries[entry_id].motion_path)
        m = (len(raw) // unit) * unit
        expected = ((raw[:m] - ref_mean) / ref_std).astype(np.float32)
        assert motion.dtype == np.float32 and motion.shape == expected.shape
        assert np.array_equal(motion, expected)
        with open(pf.entries[entry_id].text_path) as f:
            assert texts == f.readlines()
    assert any(e.frames != e.cropped_frames for e in pf.entries)  # odd lengths were cropped


def test_workers_give_identical_output(dataset):
    mean, std = load_stats(dataset.layout.mean_file, dataset.layout.std_file, 272)
    corrupt(dataset, "nan", dataset.names[6])
    entries = preflight(dataset.layout, dataset.names, 272, UNIT).entries
    _, _, _, serial = collect(entries, mean, std, workers=0)
    _, _, _, parallel = collect(entries, mean, std, workers=2)
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        assert type(a) is type(b)
        if isinstance(a, MotionBatch):
            assert (a.window_id, a.names, a.texts) == (b.window_id, b.names, b.texts)
            assert np.array_equal(a.entry_ids, b.entry_ids) and np.array_equal(a.motions, b.motions)
        else:
            assert a == b


def test_windows_and_failures(dataset):
    lay, names = dataset.layout, dataset.names
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    entries = preflight(lay, names, 272, UNIT).entries
    corrupt(dataset, "nan", names[2])
    corrupt(dataset, "inf", names[9])
    corrupt(dataset, "truncated", names[15])  # changed after preflight: a failure, not a crash
    loaded, failures, ends, items = collect(entries, mean, std, batch_frames=64, window=7)

    assert [(f.entry_id, f.name) for f in failures] == [(i, names[i]) for i in (2, 9, 15)]
    assert "1 NaN or Inf values" in failures[0].reason and "1 NaN or Inf" in failures[1].reason
    assert "truncated" in failures[2].reason
    assert failures[0].path == lay.motion_path(names[2])
    assert str(failures[0]) == f"{lay.motion_path(names[2])}: {failures[0].reason}"
    assert [f.window_id for f in failures] == [0, 1, 2]
    assert sorted(loaded) == [i for i in range(24) if i not in (2, 9, 15)]
    for entry_id, (motion, _) in loaded.items():
        assert np.array_equal(motion, reference(entries[entry_id], mean, std))

    assert [(e.window_id, e.start, e.stop, e.n_entries) for e in ends] == [
        (0, 0, 7, 7), (1, 7, 14, 7), (2, 14, 21, 7), (3, 21, 24, 3)]
    # each window's items come before its end marker, and after the previous one's
    window_of_item = []
    for item in items:
        if isinstance(item, WindowEnd):
            assert set(window_of_item) <= {item.window_id}
            window_of_item = []
        else:
            window_of_item.append(item.window_id)
    assert window_of_item == []


def test_resume_from_a_subset(dataset):
    mean, std = load_stats(dataset.layout.mean_file, dataset.layout.std_file, 272)
    entries = preflight(dataset.layout, dataset.names, 272, UNIT).entries
    rest = entries[10:]
    loaded, _, ends, _ = collect(rest, mean, std, window=100)
    assert [e.n_entries for e in ends] == [14]
    assert {rest[i].index_in_split for i in loaded} == set(range(10, 24))
    for entry_id, (motion, _) in loaded.items():
        assert np.array_equal(motion, reference(rest[entry_id], mean, std))


def test_other_dtypes_and_orders_load_like_np_load(dataset):
    lay, names = dataset.layout, dataset.names
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    np.save(lay.motion_path(names[0]), np.asfortranarray(np.load(lay.motion_path(names[0]))))
    np.save(lay.motion_path(names[1]), np.load(lay.motion_path(names[1])).astype(">f4"))
    np.save(lay.motion_path(names[2]), np.load(lay.motion_path(names[2])).astype(np.float64) + 1e-9)
    entries = preflight(lay, names, 272, UNIT).entries
    loaded, failures, _, _ = collect(entries[:3], mean, std)
    assert failures == []
    for i in range(3):
        assert np.array_equal(loaded[i][0], reference(entries[i], mean, std))


def test_non_ascii_names(dataset):
    lay = dataset.layout
    name = "caf\u00e9/\u540d\u524d 1"
    Path(lay.motion_path(name)).parent.mkdir(parents=True)
    Path(lay.text_path(name)).parent.mkdir(parents=True)
    np.save(lay.motion_path(name), np.load(lay.motion_path(dataset.names[0])))
    Path(lay.text_path(name)).write_text("d\u00e9j\u00e0 vu\n", encoding="utf-8")
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    entries = preflight(lay, [name], 272, UNIT).entries
    loaded, failures, _, _ = collect(entries, mean, std, workers=1)
    assert failures == [] and loaded[0][1] == ["d\u00e9j\u00e0 vu\n"]
    assert np.array_equal(loaded[0][0], reference(entries[0], mean, std))


def test_unit_mismatch_is_refused(dataset):
    mean, std = load_stats(dataset.layout.mean_file, dataset.layout.std_file, 272)
    entries = preflight(dataset.layout, dataset.names, 272, 2).entries
    odd = [e for e in entries if e.cropped_frames % 4]
    assert odd
    with pytest.raises(ValueError, match="unit length 4"):
        next(iter_batches(odd, mean, std, 4, 64, 7, 0))
