"""The GPU path's parts, run with the device set to CPU: the hybrid re-check proven with an injected
inexact "fast" encoder, the device encoder's guarded pinned/async path, row buckets, and the
one prepared GPU benchmark script at a small size."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from build_helpers import tiny_config

from tokstore.synthetic import _motion, motionmillion_stats
from vqvae import VQVAE
from vqvae.exact import DeviceFast, ExactEncoder, ExactnessError, row_buckets


class NoisyFast:
    """An inexact fast encoder: the CPU model, batched, with uniform noise in [-amplitude,
    amplitude] added to its decision variables (and its codes and slack decided from them)."""

    def __init__(self, model: VQVAE, amplitude: float, seed: int = 0):
        self.model, self.amplitude = model, amplitude
        self.rng = np.random.default_rng(seed)
        self.flipped = 0  # tokens whose code the noise changed

    def __call__(self, motions):
        decision = self.model.decide(torch.as_tensor(motions))
        noise = self.rng.uniform(-self.amplitude, self.amplitude, decision.variables.shape)
        moved = self.model.quantize(decision.variables + torch.from_numpy(noise).float())
        self.flipped += int((moved.codes != decision.codes).sum())
        return lambda: moved


def model_and_batches(n_batches: int = 10, rows: int = 20, frames: int = 80):
    torch.manual_seed(0)
    model = VQVAE(tiny_config()).eval()
    mean, std = motionmillion_stats()
    batches = []
    for b in range(n_batches):
        motions = [_motion(np.random.default_rng([b, r]), frames, mean, std, 4) for r in range(rows)]
        batches.append(np.stack([((m - mean) / std).astype(np.float32) for m in motions]))
    return model, batches


def exact_codes(model, batches):
    with ExactEncoder(model) as engine:
        return [np.stack([engine.encode_one(row) for row in batch]) for batch in batches]


def test_noise_below_the_margin_gives_the_exact_codes():
    model, batches = model_and_batches()
    expected = exact_codes(model, batches)
    fast = NoisyFast(model, 2e-4)
    with ExactEncoder(model, threads=2, fast=fast) as engine:
        calibrated = engine.calibrate(batches[:2])
        assert engine.margin == pytest.approx(10 * calibrated[0].checks.measured_deviation, rel=0.5)
        assert 1e-3 < engine.margin < 3e-3  # 10x the noise it measured
        results = calibrated + [f.result() for f in [engine.submit(b) for b in batches[2:]]]
        checks = engine.checks
    assert fast.flipped > 0  # the fast encoder alone gets codes wrong
    for got, want in zip(results, expected):
        assert np.array_equal(got.codes, want)
    assert checks.rows_reencoded > 0 and checks.tokens_changed > 0
    assert checks.max_reencode_deviation <= 2e-4 * 1.01


def test_noise_above_the_margin_is_caught():
    model, batches = model_and_batches()
    fast = NoisyFast(model, 2e-5)
    with ExactEncoder(model, threads=2, fast=fast) as engine:
        engine.calibrate(batches[:2])
        assert engine.margin < 3e-4
        fast.amplitude = 5e-3  # the fast encoder gets worse than calibration saw
        futures = [engine.submit(b) for b in batches[2:]]
        with pytest.raises(ExactnessError, match="exactness check failed"):
            for future in futures:
                future.result()


def test_re_checks_run_on_the_pinned_workers_not_the_submitting_thread():
    model, batches = model_and_batches(n_batches=4)
    where = []
    decide = model.decide

    def spy(x, precision="fp32"):
        if len(x) == 1:
            where.append((threading.current_thread().name, torch.get_num_threads()))
        return decide(x, precision)

    model.decide = spy
    with ExactEncoder(model, threads=2, fast=NoisyFast(model, 1e-4)) as engine:
        engine.calibrate(batches[:1])
        for future in [engine.submit(b) for b in batches[1:]]:
            future.result()
    assert where and all(name.startswith("vqvae-exact") and threads == 1 for name, threads in where)


def test_device_fast_on_cpu_is_the_plain_path_and_exact_through_the_re_check(monkeypatch):
    model, batches = model_and_batches(n_batches=3, rows=7)

    def no_pinning(self, *args, **kwargs):
        raise AssertionError("pinned memory is for CUDA only")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    fast = DeviceFast(model)
    assert not fast.cuda and fast._copy_stream is None
    decision = fast(batches[0])()
    # 7 rows run as buckets of 4, 2 and 1: the same codes as the whole batch, up to the rounding
    # that batch shapes may change (which the re-check exists for)
    whole = model.decide(torch.from_numpy(batches[0]))
    assert decision.codes.shape == whole.codes.shape
    assert float(model.deviation(whole.variables, decision.variables).max()) < 1e-4
    with ExactEncoder(model, threads=2, fast=fast) as engine:
        engine.calibrate(batches[:1])
        got = [engine.submit(b).result().codes for b in batches]
    assert all(np.array_equal(g, e) for g, e in zip(got, exact_codes(model, batches)))


def test_row_buckets():
    assert row_buckets(37) == [32, 4, 1]
    assert row_buckets(64) == [64]
    assert row_buckets(0) == []
    for n in range(1, 300):
        sizes = row_buckets(n)
        assert sum(sizes) == n and all(s & (s - 1) == 0 for s in sizes)
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_the_gpu_benchmark_runs_small_on_cpu(tmp_path, capsys):
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--motions", "12", "--width", "32", "--original", "3",
                     "--agreement", "4", "--workers", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["exactness_mode"] == "exact"
    for key in ("original_fps", "build_fps", "ratio_vs_original", "encode_only_fps"):
        assert report[key] > 0
    assert report["agreement"]["store"]["motions_identical"] == 4
    assert set(report["agreement"]) == {"store", "cpu fp32", "cpu tf32", "cpu bf16"}
    assert report["peak_gpu_memory_bytes"] is None
    printed = capsys.readouterr().out
    assert "(b) tokstore build:" in printed and f"wrote {out}" in printed


def test_the_build_pipeline_with_a_hybrid_engine_hands_back_exact_codes_in_order(tmp_path):
    """encode_batches as the build runs it on CUDA (engine with a fast encoder), with the CPU
    model plus noise as the device: loader batches in, each batch's exact codes out, in order."""
    from build_helpers import tiny_setup

    from tokstore.build import encode_batches
    from tokstore.loading import MotionBatch, iter_batches
    from tokstore.sources import load_stats, preflight, read_split
    from vqvae import load_checkpoint

    dataset, checkpoint = tiny_setup(tmp_path, n=60, lengths=(40, 48))
    config = tiny_config()
    model = load_checkpoint(checkpoint, config)
    layout = dataset.layout
    mean, std = load_stats(layout.mean_file, layout.std_file, config.input_dim)
    entries = preflight(layout, read_split(layout.split_file), config.input_dim,
                        config.unit_length).entries
    items = list(iter_batches(entries, mean, std, config.unit_length, 200, 20, workers=2))
    fast = NoisyFast(model, 1e-3)
    with ExactEncoder(model, mean, std, threads=2, fast=fast) as engine:
        out = list(encode_batches(items, model, "fp32", torch.device("cpu"), engine=engine,
                                  calibration_frames=400))
        expected = {}
        for item in items:
            if isinstance(item, MotionBatch):
                for entry_id, row in zip(item.entry_ids.tolist(), item.motions):
                    expected[entry_id] = engine.encode_one(row)
    assert [item for item, _ in out] == items  # every item, in order
    got = {i: row for item, result in out if isinstance(item, MotionBatch)
           for i, row in zip(item.entry_ids.tolist(), result.codes)}
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[i], expected[i]) for i in got)
    assert fast.flipped > 0 and engine.checks.tokens_changed > 0


def test_an_inexact_device_build_collects_its_batches_behind_the_launches():
    """The inexact device path (tf32/bf16 on CUDA) launches batches ahead and collects them in
    order; on CPU its codes are the model's own batched codes."""
    from tokstore.build_encode import _device_batches
    from tokstore.loading import MotionBatch

    model, batches = model_and_batches(n_batches=6, rows=4)  # one row bucket: the batch as it is
    items = [MotionBatch(0, np.arange(4) + 4 * i, [], [], b) for i, b in enumerate(batches)]
    launched = []

    class Recording(DeviceFast):
        def __call__(self, motions):
            launched.append(len(motions))
            return super().__call__(motions)

    out = list(_device_batches(iter(items), Recording(model, "bf16"), ahead=2))
    assert [item for item, _ in out] == items
    for (_, result), batch in zip(out, batches):
        assert np.array_equal(result.codes, model.encode(torch.from_numpy(batch), "bf16",
                                                         batch_exact=False).numpy())
    assert launched == [4] * 6
