"""tokstore.loading: batch planning, and loading that equals the original's per-motion arithmetic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokstore.loading import LoadFailure, MotionBatch, WindowEnd, iter_batches, plan_batches
from tokstore.sources import Entry, SourceLayout, load_stats, preflight, read_split
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


def test_a_header_made_unparsable_after_preflight_is_a_load_failure(dataset):
    from test_sources import unclosed_header

    lay, names = dataset.layout, dataset.names
    mean, std = load_stats(lay.mean_file, lay.std_file, 272)
    entries = preflight(lay, names, 272, UNIT).entries
    unclosed_header(lay.motion_path(names[5]))
    loaded, failures, _, _ = collect(entries, mean, std)
    assert [(f.entry_id, f.path) for f in failures] == [(5, lay.motion_path(names[5]))]
    assert failures[0].reason.startswith("unreadable .npy (cannot parse the header")
    assert sorted(loaded) == [i for i in range(24) if i != 5]


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
