"""Attacks on the exact-encode engine (vqvae/exact.py) as an unlucky or hostile user would make
them: each test failed before the fix named in its docstring."""
from __future__ import annotations

import json
import threading

import numpy as np
import torch

from vqvae import VQVAE, VQVAEConfig


def _fresh_thread_count() -> int:
    """The process-wide intra-op count: what a thread touching torch for the first time copies."""
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_an_encode_from_a_thread_with_an_older_count_leaves_the_process_setting_alone():
    """A host thread that first used torch while the count was 2 keeps 2 after the process sets
    3. An exact encode from that thread used to 'restore' the process-wide count to the thread's
    own 2 (fixed: the one-thread window runs in a fresh thread, which reads the process's 3)."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(quantizer="FSQ", nb_code=256, width=16, code_dim=8,
                              output_emb_width=8, depth=1, down_t=1, input_dim=6))
    x = torch.randn(2, 8, 6)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first_use, go, seen = threading.Event(), threading.Event(), {}

        def host_thread():
            seen["own"] = torch.get_num_threads()  # fixed at 2 for this thread's life
            first_use.set()
            go.wait()
            seen["codes"] = model.encode(x)
            seen["own_after"] = torch.get_num_threads()

        t = threading.Thread(target=host_thread)
        t.start()
        first_use.wait()
        torch.set_num_threads(3)
        go.set()
        t.join()
        assert seen["own"] == seen["own_after"] == 2
        assert torch.get_num_threads() == 3
        assert _fresh_thread_count() == 3
        assert torch.equal(seen["codes"], model.encode(x))
    finally:
        torch.set_num_threads(before)


def long_then_short_dataset(tmp_path):
    """45 motions of distinct lengths 120..296 (each its own one-row batch), then 16 of 100
    frames (one batch of 16 rows), with windows of 45: the calibration budget (4 x 2048 frames
    of any batches) is spent before the first multi-row batch."""
    from build_helpers import tiny_config

    from tokstore.demo import save_random_checkpoint
    from tokstore.synthetic import _motion, make_dataset

    dataset = make_dataset(tmp_path / "data", 61, lengths=(100, 100))
    mean, std = np.load(dataset.layout.mean_file), np.load(dataset.layout.std_file)
    rng = np.random.default_rng(5)
    for i, name in enumerate(dataset.names[:45]):
        np.save(dataset.layout.motion_path(name), _motion(rng, 120 + 4 * i, mean, std, 4))
    checkpoint = tmp_path / "checkpoint.pth"
    save_random_checkpoint(checkpoint, tiny_config(), 0)
    return dataset, checkpoint


def test_a_build_whose_start_has_no_multi_row_batch_records_an_uncalibrated_margin(tmp_path):
    """Nothing to calibrate on at the start used to count as a measured deviation of 0: the margin
    fell to the floor (1e-5), below the policy's own uncalibrated default (5e-5), and info said
    '10x the measured deviation 0'. Fixed: an empty calibration keeps the default, and info says
    the margin was not calibrated."""
    from build_helpers import build_args, run_cli
    from test_exact import original_codes, stored_codes

    from vqvae.exact import MarginPolicy

    dataset, checkpoint = long_then_short_dataset(tmp_path)
    store = tmp_path / "s.zarr"
    result = run_cli(*build_args(dataset, checkpoint, store, "--window", "45"))
    assert result.exit_code == 0, result.output
    info = json.loads(run_cli("info", store, "--json").output)["exactness"]
    assert info["calibration_rows"] == 0
    assert info["margin"] == MarginPolicy().default
    text = run_cli("info", store).output
    assert "not calibrated" in text and "10x the measured deviation 0," not in text
    from build_helpers import tiny_config
    original = original_codes(checkpoint, tiny_config(), dataset.layout, dataset.names,
                              np.load(dataset.layout.mean_file), np.load(dataset.layout.std_file))
    ours = stored_codes(store)
    assert all(np.array_equal(ours[n], original[n]) for n in dataset.names)


def test_info_of_a_build_with_only_single_motion_batches_says_how_its_codes_were_made(tmp_path):
    """One motion: no batch to re-check, margin 0. info said 'checked as below' and then nothing."""
    from build_helpers import build_args, run_cli, tiny_setup

    dataset, checkpoint = tiny_setup(tmp_path, n=1, lengths=(40, 40))
    store = tmp_path / "s.zarr"
    assert run_cli(*build_args(dataset, checkpoint, store)).exit_code == 0
    text = run_cli("info", store).output
    assert "every motion was encoded alone" in text


def test_a_hybrid_build_calibrates_on_one_motion_batches_too(tmp_path):
    """On a device, a one-motion batch is as inexact as any (GPU vs CPU), yet the build sampled
    only multi-row batches: a start of distinct lengths left the device uncalibrated, its noise
    (1e-3, an injected inexact device) flipped codes of rows not re-checked, and the build handed
    them back until a re-checked row stopped it. Fixed: a hybrid calibrates on every batch."""
    from build_helpers import tiny_config, tiny_setup
    from test_vqvae_hybrid import NoisyFast

    from tokstore.build import encode_batches
    from tokstore.loading import MotionBatch, iter_batches
    from tokstore.sources import load_stats, preflight, read_split
    from vqvae import load_checkpoint
    from vqvae.exact import ExactEncoder

    dataset, checkpoint = tiny_setup(tmp_path, n=40, lengths=(104, 200))
    config = tiny_config()
    model = load_checkpoint(checkpoint, config)
    layout = dataset.layout
    mean, std = load_stats(layout.mean_file, layout.std_file, config.input_dim)
    entries = preflight(layout, read_split(layout.split_file), config.input_dim,
                        config.unit_length).entries
    items = list(iter_batches(entries, mean, std, config.unit_length, 200, 40))
    assert all(len(i.motions) == 1 for i in items if isinstance(i, MotionBatch))
    fast = NoisyFast(model, 1e-3)
    with ExactEncoder(model, mean, std, threads=2, fast=fast) as engine:
        out = list(encode_batches(items, model, "fp32", torch.device("cpu"), engine=engine,
                                  calibration_frames=400))
        expected = {i: engine.encode_one(row) for item in items if isinstance(item, MotionBatch)
                    for i, row in zip(item.entry_ids.tolist(), item.motions)}
        assert engine.checks.calibration_rows > 0 and engine.margin > 1e-3
    got = {i: row for item, result in out if isinstance(item, MotionBatch)
           for i, row in zip(item.entry_ids.tolist(), result.codes)}
    assert all(np.array_equal(got[i], expected[i]) for i in expected)


def test_long_double_statistics_or_motions_are_refused_naming_the_file(tmp_path):
    """float128 .npy: the original's torch.from_numpy cannot take it, so there are no original
    codes to equal. Statistics used to pass loading and fail at the store's meta with 'meta must
    be JSON-safe' (naming no file); a motion was normalized in long double. Fixed: both refused
    as float types wider than float64, naming the file."""
    from build_helpers import build_args, run_cli, tiny_setup

    dataset, checkpoint = tiny_setup(tmp_path, n=6, lengths=(40, 80))
    layout = dataset.layout
    std64 = np.load(layout.std_file)
    np.save(layout.std_file, std64.astype(np.longdouble))
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "s.zarr"))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert str(layout.std_file) in errors[0] and "float128" in errors[0]

    np.save(layout.std_file, std64)
    motion = layout.motion_path(dataset.names[2])
    np.save(motion, np.load(motion).astype(np.longdouble))
    result = run_cli(*build_args(dataset, checkpoint, tmp_path / "t.zarr"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{motion}: dtype float128 is not a float type of at most 64 bits" in result.output
