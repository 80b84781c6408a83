"""info / show / ls / stats / verify / decode through the CLI, on stores of the golden sets."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from build_helpers import OnceBuiltCliRunner

from cli import app
from conftest import GOLDEN, golden_info
from tokstore import TokenStore
from tokstore.sources import SourceLayout, load_stats, read_captions
from vqvae import VQVAEConfig, denormalize, file_sha256

runner = OnceBuiltCliRunner()


def cli(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


def expected_codes(name: str) -> dict[str, np.ndarray]:
    info = golden_info(name)
    return {n: np.load(GOLDEN / name / "expected" / "codes" / f"{n}.npy") for n in info["names"]}


def build_store(golden_set: str, path, backend: str):
    """`tokstore build` of a golden set, as a user runs it."""
    flags = VQVAEConfig.from_dict(golden_info(golden_set)["config"]).to_flags()
    cli("build", "--root", GOLDEN / golden_set / "dataset", "--checkpoint",
        GOLDEN / golden_set / "checkpoint.pth", "--store", path, "--backend", backend,
        "--workers", 0, "--device", "cpu", *flags)
    return path


def repack(source, target, meta_update=None, edit_codes=None):
    """A copy of a store with meta keys replaced and/or codes edited, written through the store API
    so that it is self-consistent (checksums and counts agree with what it holds)."""
    with TokenStore.open(source) as old:
        meta = {**old.meta, **(meta_update or {})}
        samples = [(s.name, s.codes.copy(), s.texts) for s in old]
        size = old.codebook_size
    if edit_codes:
        edit_codes(samples)
    with TokenStore.create(target, size, meta=meta) as new:
        new.append(*zip(*samples))
        new.commit()
    return target


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Built once per module: (golden set, backend) -> store path. Tests that damage a store copy it."""
    made = {}

    def get(golden_set="ema512", backend="zarr"):
        if (golden_set, backend) not in made:
            root = tmp_path_factory.mktemp(f"{golden_set}-{backend}")
            made[golden_set, backend] = build_store(golden_set, root / ("store.h5" if backend == "hdf5" else "store"),
                                                    backend)
        return made[golden_set, backend]
    return get


def copy_store(path, tmp_path):
    target = tmp_path / path.name
    shutil.copytree(path, target) if path.is_dir() else shutil.copy(path, target)
    return target


SETS_AND_BACKENDS = [("ema512", "zarr"), ("fsq64000", "zarr"), ("ema512", "hdf5")]


# ---- info / show / ls ------------------------------------------------------------------------

@pytest.mark.parametrize("golden_set,backend", SETS_AND_BACKENDS)
def test_info_reports_counts_and_provenance(stores, golden_set, backend):
    info = golden_info(golden_set)
    path = stores(golden_set, backend)
    found = json.loads(cli("info", path, "--json").output)
    n = len(info["names"])
    assert found["samples"] == n
    assert found["tokens"] == info["total_tokens"]
    assert found["codes"] == info["total_tokens"] - n
    assert found["frames"] == found["codes"] * info["unit_length"]
    assert (found["codebook_size"], found["end_token"], found["pad_token"]) == (
        info["codebook_size"], info["codebook_size"], info["codebook_size"] + 1)
    assert found["checkpoint_sha256"] == file_sha256(GOLDEN / golden_set / "checkpoint.pth")
    assert found["backend"] == backend and found["legacy_code_dtype"] == info["code_dtype"]
    assert found["model_config"]["nb_code"] == info["config"]["nb_code"]
    assert found["size_bytes"] > 0 and found["skipped"] == []

    text = cli("info", path).output
    assert f"tokens:       {info['total_tokens']} " in text
    assert f"end token {info['codebook_size']}, pad token {info['codebook_size'] + 1}" in text
    assert f"--nb-code {info['config']['nb_code']}" in text


def test_info_lists_skipped_entries(tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(GOLDEN / "ema512" / "dataset", dataset)
    lost = golden_info("ema512")["names"][2]
    (dataset / "motion_data" / "vector_272" / f"{lost}.npy").unlink()
    cli("build", "--root", dataset, "--checkpoint", GOLDEN / "ema512" / "checkpoint.pth",
        "--store", tmp_path / "store", "--workers", 0, "--device", "cpu", "--on-error", "skip",
        *VQVAEConfig.from_dict(golden_info("ema512")["config"]).to_flags())
    found = json.loads(cli("info", tmp_path / "store", "--json").output)
    assert found["samples"] == 7 and [s["name"] for s in found["skipped"]] == [lost]
    assert f"skipped:      1\n  {lost}: " in cli("info", tmp_path / "store").output


@pytest.mark.parametrize("golden_set,backend", SETS_AND_BACKENDS)
def test_show_gives_codes_and_captions(stores, golden_set, backend):
    path = stores(golden_set, backend)
    layout = SourceLayout.motionmillion(GOLDEN / golden_set / "dataset")
    for name, codes in list(expected_codes(golden_set).items())[:3]:
        found = json.loads(cli("show", path, name, "--json").output)
        assert found["codes"] == codes[0].tolist()
        assert found["texts"] == [line.rstrip("\n") for line in read_captions(layout.text_path(name))]
    name, codes = next(iter(expected_codes(golden_set).items()))
    assert "codes:  " + " ".join(map(str, codes[0])) in cli("show", path, name).output


def test_show_unknown_name_is_a_clear_error(stores):
    result = cli("show", stores(), "humanml/nope", ok=False)
    assert result.exit_code == 1 and "no sample named 'humanml/nope'" in result.output


def test_ls_filters(stores):
    path = stores("fsq64000")
    lengths = {n: c.shape[1] for n, c in expected_codes("fsq64000").items()}
    rows = json.loads(cli("ls", path, "--json").output)
    assert [(r["name"], r["length"]) for r in rows] == list(lengths.items())
    assert rows[0]["caption"] == "a person does motion 0 variant 0"

    cut = sorted(lengths.values())[len(lengths) // 2]
    rows = json.loads(cli("ls", path, "--min-len", cut, "--json").output)
    assert {r["name"] for r in rows} == {n for n, k in lengths.items() if k >= cut}
    rows = json.loads(cli("ls", path, "--max-len", cut - 1, "--name-glob", "humanml/*", "--json").output)
    assert {r["name"] for r in rows} == {n for n, k in lengths.items() if k < cut and n.startswith("humanml/")}
    rows = json.loads(cli("ls", path, "--grep", "motion 3 ", "--json").output)
    assert [r["name"] for r in rows] == ["animation/sub dir/clip_0_003"]

    lines = cli("ls", path, "--name-glob", "animation/*").output.splitlines()
    assert lines[0] == (f"{lengths['animation/sub dir/clip_0_003']}\tanimation/sub dir/clip_0_003\t"
                        "a person does motion 3 variant 0")
    assert len(lines) == 3


# ---- stats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("golden_set", ["ema512", "fsq64000"])
def test_stats_numbers(stores, golden_set):
    info = golden_info(golden_set)
    all_codes = np.concatenate([c[0] for c in expected_codes(golden_set).values()])
    found = json.loads(cli("stats", stores(golden_set), "--top", 3, "--json").output)
    assert found["active_codes"] == info["distinct_codes"]
    assert found["active_share"] == pytest.approx(info["distinct_codes"] / info["codebook_size"])
    p = np.unique(all_codes, return_counts=True)[1] / len(all_codes)
    assert found["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    (top_code, top_count), = Counter(all_codes.tolist()).most_common(1)
    assert found["top_codes"][0]["count"] == top_count and len(found["top_codes"]) == 3
    lengths = [c.shape[1] for c in expected_codes(golden_set).values()]
    assert (found["lengths"]["min"], found["lengths"]["max"]) == (min(lengths), max(lengths))
    assert found["lengths"]["mean"] == pytest.approx(np.mean(lengths))

    text = cli("stats", stores(golden_set)).output
    assert f"active codes: {info['distinct_codes']} of {info['codebook_size']}" in text


@pytest.mark.parametrize("golden_set", ["ema512", "fsq64000"])
def test_stats_plot_writes_a_png(stores, golden_set, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "stats.png"
    cli("stats", stores(golden_set), "--plot", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300


def test_stats_plot_of_an_imported_store_without_a_model(tmp_path):
    """A store imported from legacy files records no model: the plot shows usage per code."""
    pytest.importorskip("matplotlib")
    store, out = tmp_path / "imported.zarr", tmp_path / "stats.png"
    cli("import", "--pickle", GOLDEN / "fsq64000" / "expected" / "all_data.pkl",
        "--codebook-size", 64000, "--store", store)
    shown = cli("stats", store, "--plot", out).output
    assert f"active codes: {golden_info('fsq64000')['distinct_codes']} of 64000" in shown
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_plot_checks_its_path_before_drawing_and_leaves_nothing_when_drawing_fails(
        stores, tmp_path, monkeypatch):
    """A path that cannot be written is refused before the drawing (~1 s at 64,000 codes), and
    a figure that fails to draw leaves no file where there was none."""
    pytest.importorskip("matplotlib")
    from tokstore import plots

    drawn = []
    real = plots._draw

    def failing(*args):
        drawn.append(args)
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "_draw", failing)
    store = stores("fsq64000")
    missing = tmp_path / "no" / "such" / "dir" / "stats.png"
    result = cli("stats", store, "--plot", missing, ok=False)
    assert result.exit_code != 0 and f"error: {missing}" in result.output and drawn == []
    out = tmp_path / "stats.png"
    failed = cli("stats", store, "--plot", out, ok=False)
    assert isinstance(failed.exception, RuntimeError) and len(drawn) == 1 and not out.exists()
    monkeypatch.setattr(plots, "_draw", real)
    cli("stats", store, "--plot", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_long_series_are_drawn_through_few_points_that_keep_what_a_pixel_shows():
    """64,000 codebook rows become at most 2,000 points: every bin's smallest and largest count
    (a lone spike or gap survives), in order; a falling rank series keeps its ends."""
    from tokstore.plots import POINTS, envelope, log_spaced

    rows = np.full(64000, 50)
    rows[12345], rows[40000] = 10**6, 0
    x, y = envelope(rows)
    assert len(x) == len(y) <= POINTS and np.all(np.diff(x) >= 0)
    assert 0 <= x[0] and x[-1] < len(rows)
    assert y.max() == 10**6 and y.min() == 0 and set(y.tolist()) == {0, 50, 10**6}
    spike = x[y == 10**6]
    assert abs(spike.mean() - 12345) < len(rows) / (POINTS // 2)
    short = np.arange(7)
    assert [a.tolist() for a in envelope(short, points=8)] == [[0.5, 0.5, 2.5, 2.5, 4.5, 4.5,
                                                                6.5, 6.5],
                                                               [0, 1, 2, 3, 4, 5, 6, 6]]
    falling = np.sort(np.random.default_rng(0).zipf(1.5, 50000))[::-1]
    ranks, values = log_spaced(falling)
    assert len(ranks) <= POINTS and ranks[0] == 1 and ranks[-1] == len(falling)
    assert np.array_equal(values, falling[ranks - 1]) and np.all(np.diff(ranks) > 0)
    assert [a.tolist() for a in log_spaced(falling[:5])] == [[1, 2, 3, 4, 5],
                                                              falling[:5].tolist()]


@pytest.mark.parametrize("counts, per_dimension", [
    (np.arange(700_000, 764_002), None),  # one decade on a log axis: labels such as 9x10^5
    (np.array([5, 3, 0, 0]), None),
    (np.arange(10**14, 10**14 + 64_002) * 7, [np.full(8, 10**15)] * 5)],
    ids=["within-a-decade", "tiny-codebook", "huge-fsq"])
def test_plot_labels_stay_inside_the_figure(counts, per_dimension):
    """The margins are fixed (no measuring layout): every label and tick label must still fit."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from tokstore import plots

    figure = plots._draw(Figure(figsize=plots.FIGSIZE), counts, np.arange(1, 3_000_000, 997),
                         per_dimension)
    renderer = FigureCanvasAgg(figure).get_renderer()  # lays the text out, draws nothing
    inside = figure.bbox
    for ax in figure.axes:  # everything drawn for a panel: title, labels, tick labels, offsets
        box = ax.get_tightbbox(renderer)
        assert (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                and box.y1 <= inside.y1), (ax.get_title(), box)
    for left, right in zip(figure.axes, figure.axes[1:]):  # nor does one panel run into the next
        assert left.get_tightbbox(renderer).x1 < right.get_tightbbox(renderer).x0


def test_fsq_digit_counts_split_each_code_into_its_levels():
    from tokstore.inspect import fsq_digit_counts

    levels = (8, 5, 5, 5)  # basis 1, 8, 40, 200
    counts = np.zeros(1000, np.int64)
    counts[3 + 8 * 4 + 40 * 0 + 200 * 2] = 5   # digits (3, 4, 0, 2)
    counts[7] = 2                              # digits (7, 0, 0, 0)
    per_dim = fsq_digit_counts(counts, levels)
    assert [len(d) for d in per_dim] == list(levels)
    assert per_dim[0].tolist() == [0, 0, 0, 5, 0, 0, 0, 2]
    assert per_dim[1].tolist() == [2, 0, 0, 0, 5]
    assert per_dim[2].tolist() == [7, 0, 0, 0, 0]
    assert per_dim[3].tolist() == [2, 0, 5, 0, 0]


# ---- verify ----------------------------------------------------------------------------------

@pytest.mark.parametrize("golden_set,backend", SETS_AND_BACKENDS)
def test_verify_passes_on_a_good_store(stores, golden_set, backend):
    assert cli("verify", stores(golden_set, backend)).output.strip() == "verify: OK"


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_verify_names_a_flipped_code_byte_zarr(stores, tmp_path):
    path = copy_store(stores(), tmp_path)
    flip_byte(path / "codes" / "c" / "0", 10)
    out = cli("verify", path, ok=False).output
    assert "FAIL codes: checksum mismatch" in out and "verify: FAILED" in out


def test_verify_names_a_flipped_code_byte_hdf5(stores, tmp_path):
    import h5py

    path = copy_store(stores("ema512", "hdf5"), tmp_path)
    with h5py.File(path, "r") as f:
        offset = f["codes"].id.get_chunk_info_by_coord((0,)).byte_offset
    flip_byte(path, offset + 10)
    out = cli("verify", path, ok=False).output
    assert "FAIL codes: checksum mismatch" in out


def test_verify_names_a_removed_chunk_file(stores, tmp_path):
    path = copy_store(stores(), tmp_path)
    (path / "codes" / "c" / "0").unlink()
    out = cli("verify", path, ok=False).output
    assert "FAIL codes: chunk file" in out and "is missing" in out


def test_verify_fails_when_counts_disagree_with_the_codes(stores, tmp_path):
    """One stored count of the current counts slot changed in place: the bincount of the codes
    catches it."""
    path = copy_store(stores(), tmp_path)
    with TokenStore.open(path) as store:
        slot = store._record.counts_slot  # a chunk per slot
    chunk = path / "counts" / "c" / str(slot)
    counts = np.fromfile(chunk, dtype="<i8")
    counts[int(np.argmax(counts))] += 1
    counts.tofile(chunk)
    out = cli("verify", path, ok=False).output
    assert "FAIL counts: the stored array does not match the committed codes" in out


def test_verify_reencodes_with_full_agreement(stores):
    out = cli("verify", stores("fsq64000"), "--checkpoint", GOLDEN / "fsq64000" / "checkpoint.pth",
              "--reencode", 4, "--seed", 1).output
    assert "re-encoded 4 samples: 4 exact, token agreement 100.00%" in out
    assert "matches the one recorded at build" in out and out.rstrip().endswith("verify: OK")


def test_verify_reencoding_catches_another_checkpoint(stores, tmp_path):
    state = torch.load(GOLDEN / "ema512" / "checkpoint.pth", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in state["net"].items():
        if value.is_floating_point() and "encoder" in key:
            value.add_(torch.randn(value.shape, generator=generator) * value.std().nan_to_num() * 0.5)
    other = tmp_path / "other.pth"
    torch.save(state, other)
    out = cli("verify", stores("ema512"), "--checkpoint", other, "--reencode", 8, ok=False).output
    assert "DIFFERS from the one recorded at build" in out
    assert "FAIL re-encoding: token agreement" in out and "verify: FAILED (1 problems)" in out


def test_verify_reencoding_catches_tampered_codes(stores, tmp_path):
    """A consistent store (checksums and counts match) whose first sample's first code was changed."""
    def change_first_code(samples):
        samples[0][1][0] = (samples[0][1][0] + 1) % 512

    path = repack(stores(), tmp_path / "store", edit_codes=change_first_code)
    assert cli("verify", path).output.strip() == "verify: OK"  # the store alone cannot tell
    out = cli("verify", path, "--checkpoint", GOLDEN / "ema512" / "checkpoint.pth", "--reencode", 8,
              ok=False).output
    first = golden_info("ema512")["names"][0]
    assert "re-encoded 8 samples: 7 exact" in out
    assert f"samples that differ: {first}" in out


def test_verify_needs_a_store_and_a_checkpoint_for_reencode(tmp_path, stores):
    result = cli("verify", tmp_path / "nothing", ok=False)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert "--reencode needs --checkpoint" in cli("verify", stores(), "--reencode", 2, ok=False).output


# ---- decode ----------------------------------------------------------------------------------

@pytest.mark.parametrize("golden_set,backend", [("ema512", "hdf5"), ("fsq64000", "zarr")])
def test_decode_matches_the_golden_decoding(stores, golden_set, backend, tmp_path):
    info = golden_info(golden_set)
    out = tmp_path / "motion.npy"
    cli("decode", stores(golden_set, backend), info["names"][0], out,
        "--checkpoint", GOLDEN / golden_set / "checkpoint.pth")
    motion = np.load(out)
    golden = np.load(GOLDEN / golden_set / "expected" / "decoded_first.npy")[0]  # normalized space
    layout = SourceLayout.motionmillion(GOLDEN / golden_set / "dataset")
    mean, std = load_stats(layout.mean_file, layout.std_file, 272)
    assert motion.dtype == np.float32 and motion.shape == golden.shape
    # 1e-5 in normalized units, plus float32 rounding of the de-normalized values
    assert np.all(np.abs(motion - denormalize(golden, mean, std)) <= 1e-5 * std + 1e-6 * np.abs(mean))


def test_decode_prefers_recorded_stats_and_takes_overrides(stores, tmp_path):
    name = golden_info("ema512")["names"][0]
    ckpt = GOLDEN / "ema512" / "checkpoint.pth"
    cli("decode", stores(), name, tmp_path / "from_files.npy", "--checkpoint", ckpt)

    # mean/std recorded in meta are used, the source files are not needed
    layout = SourceLayout.motionmillion(GOLDEN / "ema512" / "dataset")
    mean, std = load_stats(layout.mean_file, layout.std_file, 272)
    gone = {k: str(tmp_path / "gone" / k) for k in ("motion_dir", "text_dir", "split_file", "mean_file", "std_file")}
    path = repack(stores(), tmp_path / "store", {"mean": mean.tolist(), "std": std.tolist(), "source_paths": gone})
    cli("decode", path, name, tmp_path / "from_meta.npy", "--checkpoint", ckpt)
    np.testing.assert_array_equal(np.load(tmp_path / "from_meta.npy"), np.load(tmp_path / "from_files.npy"))

    zeros, ones = tmp_path / "zeros.npy", tmp_path / "ones.npy"
    np.save(zeros, np.zeros(272))
    np.save(ones, np.ones(272))
    cli("decode", path, name, tmp_path / "normalized.npy", "--checkpoint", ckpt, "--mean", zeros, "--std", ones)
    normalized = np.load(tmp_path / "normalized.npy")
    np.testing.assert_allclose(np.load(tmp_path / "from_meta.npy"), denormalize(normalized, mean, std), rtol=1e-6)
    assert "give --mean and --std together" in cli("decode", path, name, tmp_path / "c.npy",
                                                   "--checkpoint", ckpt, "--mean", zeros, ok=False).output


def test_reencode_without_the_source_motions_is_a_named_failure(stores, tmp_path):
    gone = {k: str(tmp_path / "gone" / k) for k in ("motion_dir", "text_dir", "split_file", "mean_file", "std_file")}
    layout = SourceLayout.motionmillion(GOLDEN / "ema512" / "dataset")
    mean, std = load_stats(layout.mean_file, layout.std_file, 272)
    path = repack(stores(), tmp_path / "store", {"mean": mean.tolist(), "std": std.tolist(), "source_paths": gone})
    out = cli("verify", path, "--checkpoint", GOLDEN / "ema512" / "checkpoint.pth", ok=False).output
    assert "FAIL re-encoding: cannot re-encode" in out and "gone/motion_dir" in out


def test_decode_unknown_name_is_a_clear_error(stores, tmp_path):
    result = cli("decode", stores(), "nope", tmp_path / "x.npy", "--checkpoint",
                 GOLDEN / "ema512" / "checkpoint.pth", ok=False)
    assert result.exit_code == 1 and "no sample named 'nope'" in result.output


def test_verify_reports_a_checkpoint_of_another_model_as_a_failure(stores):
    out = cli("verify", stores("fsq64000"), "--checkpoint", GOLDEN / "ema512" / "checkpoint.pth", ok=False).output
    assert out.startswith("FAIL re-encoding: checkpoint") and "does not fit the config" in out
