"""tokstore.synthetic: the datasets the demo, tests and benchmarks run on, and their defects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_STATS

from tokstore.errors import SourceError
from tokstore.sources import SourceLayout, load_stats, preflight, read_captions, read_split
from tokstore.synthetic import DEFECTS, SUBSETS, corrupt, make_dataset, motionmillion_stats


def test_layout_and_contents(tmp_path):
    ds = make_dataset(tmp_path, 40, seed=3, lengths=(60, 300))
    lay = SourceLayout.motionmillion(tmp_path)
    assert ds.layout == lay
    assert read_split(lay.split_file) == ds.names
    assert len(set(ds.names)) == 40
    assert {name.rsplit("/", 1)[0] for name in ds.names} == set(SUBSETS)
    assert any(" " in name for name in ds.names)
    pf = preflight(lay, ds.names, 272, 2)
    assert pf.ok and [e.frames for e in pf.entries] == ds.frames
    assert min(ds.frames) >= 60 and max(ds.frames) <= 300 and len(set(ds.frames)) > 20
    for name, frames in zip(ds.names, ds.frames):
        motion = np.load(lay.motion_path(name))
        assert motion.dtype == np.float32 and motion.shape == (frames, 272)


def test_real_motionmillion_statistics(tmp_path):
    bundled_mean, bundled_std = motionmillion_stats()
    np.testing.assert_array_equal(bundled_mean, np.load(REAL_STATS / "mean.npy"))
    np.testing.assert_array_equal(bundled_std, np.load(REAL_STATS / "std.npy"))
    ds = make_dataset(tmp_path, 3)
    mean, std = load_stats(ds.layout.mean_file, ds.layout.std_file, 272)
    np.testing.assert_array_equal(mean, bundled_mean)
    np.testing.assert_array_equal(std, bundled_std)


def test_motions_look_normalized_and_smooth(tmp_path):
    ds = make_dataset(tmp_path, 12, lengths=(200, 220))
    mean, std = motionmillion_stats()
    x = np.concatenate([(np.load(ds.layout.motion_path(n)) - mean) / std for n in ds.names])
    assert abs(x.mean()) < 0.05 and 0.9 < x.std() < 1.1
    lag1 = np.mean(x[1:] * x[:-1]) / np.mean(x * x)
    assert lag1 > 0.5  # neighbouring frames are correlated, like motion


def test_captions(tmp_path):
    ds = make_dataset(tmp_path, 30)
    caption_sets = [read_captions(ds.layout.text_path(n)) for n in ds.names]
    assert all(1 <= len([line for line in c if line.strip()]) <= 3 for c in caption_sets)
    assert any(c[-1] == "\n" for c in caption_sets)  # trailing blank line
    assert any(not c[-1].endswith("\n") for c in caption_sets)
    assert len({tuple(c) for c in caption_sets}) > 20


def test_deterministic_per_seed(tmp_path):
    a = make_dataset(tmp_path / "a", 5, seed=1)
    b = make_dataset(tmp_path / "b", 5, seed=1)
    c = make_dataset(tmp_path / "c", 5, seed=2)
    for name in a.names:
        same = [Path(ds.layout.motion_path(name)).read_bytes() for ds in (a, b, c)]
        assert same[0] == same[1] and same[0] != same[2]
        texts = [(ds.root / "texts" / f"{name}.txt").read_bytes() for ds in (a, b)]
        assert texts[0] == texts[1]


def test_other_feature_count(tmp_path):
    ds = make_dataset(tmp_path, 4, input_dim=263, motion_type="vector_263", lengths=(10, 20))
    mean, std = load_stats(ds.layout.mean_file, ds.layout.std_file, 263)
    assert (std > 0).all()
    assert preflight(ds.layout, ds.names, 263, 4).ok


@pytest.mark.parametrize("defect", DEFECTS)
def test_every_defect_is_caught(tmp_path, defect):
    ds = make_dataset(tmp_path, 6, lengths=(20, 30))
    name = ds.names[2]
    corrupt(ds, defect, name)
    if defect == "bad_stats":
        with pytest.raises(SourceError, match="mean has shape"):
            load_stats(ds.layout.mean_file, ds.layout.std_file, 272)
        return
    pf = preflight(ds.layout, read_split(ds.layout.split_file), 272, 4)
    if defect in ("nan", "inf"):
        motion = np.load(ds.layout.motion_path(name))
        assert pf.ok and not np.isfinite(motion).all()  # found at load time (test_sources)
    elif defect == "empty_split":
        assert [p.reason for p in pf.problems] == ["split is empty"]
    else:
        assert [p.name for p in pf.problems] == [name]


def test_corrupt_arguments(tmp_path):
    ds = make_dataset(tmp_path, 2)
    with pytest.raises(ValueError, match="unknown defect"):
        corrupt(ds, "gremlins", ds.names[0])
    with pytest.raises(ValueError, match="needs the name"):
        corrupt(tmp_path, "nan")
    text = corrupt(ds.layout, "missing_caption", ds.names[1])
    assert text == tmp_path / "texts" / f"{ds.names[1]}.txt" and not text.exists()
    motion = corrupt(tmp_path, "missing_motion", ds.names[0])  # a root works too
    assert motion == tmp_path / "motion_data/vector_272" / f"{ds.names[0]}.npy"
    assert not motion.exists()
