"""vqvae.exact: sound near-boundary slack, the calibrated margin and its stop rule, and threads
pinned to one intra-op thread without changing the caller's setting."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vqvae import VQVAE, VQVAEConfig
from vqvae.exact import ExactEncoder, ExactnessError, MarginPolicy, PinnedThreads
from vqvae.model import CodebookQuantizer


class Nudged(torch.nn.Module):
    """An encoder whose batches round differently: latents are the first `channels` features at
    every unit-th frame, times (1 + nudge) in a batch of more than one."""

    def __init__(self, channels: int, unit: int, nudge: float):
        super().__init__()
        self.channels, self.unit, self.nudge = channels, unit, nudge

    def forward(self, x):  # (B, D, T) -> (B, channels, T / unit)
        h = x[:, :self.channels, ::self.unit]
        return h * (1 + self.nudge) if len(x) > 1 else h


def three_row_model(nudge: float) -> VQVAE:
    """A codebook model with rows (0, 0), (0, 0.01), (10, 0) and a nudging encoder."""
    model = VQVAE(VQVAEConfig(quantizer="ema_reset", nb_code=3, code_dim=2, output_emb_width=2,
                              width=8, depth=1, down_t=1, input_dim=4))
    model.vqvae["quantizer"].codebook.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.01], [10.0, 0.0]]))
    model.vqvae["encoder"] = Nudged(2, 2, nudge)
    return model


def test_the_three_row_codebook_case_is_flagged():
    quantizer = CodebookQuantizer("ema_reset", 3, 2)
    quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.01], [10.0, 0.0]]))
    x = torch.tensor([5 - 1e-4, 0.0])
    codes, slack = quantizer.encode(x.view(1, 2, 1))
    assert int(codes) == 0
    # moving x by 5e-5 |x| reaches row 2, which is not one of the two nearest rows
    moved, _ = quantizer.encode((x + torch.tensor([5e-5 * x.norm(), 0])).view(1, 2, 1))
    assert int(moved) == 2
    assert float(slack) < 5e-5  # so a margin of 5e-5 flags it (the two-nearest test did not)
    # and the slack is the triangle-inequality bound: (|x - c2| - |x - c0|) / (2 |x|)
    x64 = x.double()
    expected = ((x64 - torch.tensor([0.0, 0.01]).double()).norm() - x64.norm()) / (2 * x64.norm())
    assert float(slack) == pytest.approx(float(expected), rel=1e-3)


def test_a_flagged_row_is_re_encoded_alone_or_the_encoder_stops():
    x = torch.zeros(2, 2, 4)
    x[:, :, 0] = 5 - 1e-4  # both rows' tokens sit by the three-row near-tie
    model = three_row_model(nudge=4e-5)  # moves the batch's x by 4e-5 |x|: code 0 -> 2
    assert model.encode(x, batch_exact=False).tolist() == [[2], [2]]
    alone = model.decide(x[:1]).codes.tolist()
    assert alone == [[0]]
    lenient = MarginPolicy(stop_fraction=1.0)  # the default margin 5e-5 > 4e-5: re-encoded
    with ExactEncoder(model, policy=lenient) as engine:
        result = engine.encode_batch(x.numpy())
    assert result.codes.tolist() == [[0], [0]]
    assert result.checks.rows_reencoded == 2 and result.checks.tokens_changed == 2
    assert result.checks.max_reencode_deviation == pytest.approx(4e-5, rel=1e-2)
    # with the default policy 4e-5 is more than half the margin: the calibration was too small
    with ExactEncoder(model) as engine, pytest.raises(ExactnessError, match="exactness check failed"):
        engine.encode_batch(x.numpy())


def test_calibration_measures_the_deviation_and_sets_the_margin():
    x = torch.zeros(3, 2, 4)
    x[:, :, :2] = torch.tensor([3.0, 1.0])
    model = three_row_model(nudge=2 ** -20)  # powers of two: float32 holds 1 + nudge exactly
    with ExactEncoder(model) as engine:
        assert engine.margin == MarginPolicy().default  # uncalibrated
        [result] = engine.calibrate([x.numpy()])
        assert result.checks.calibration_rows == 3
        assert result.checks.measured_deviation == pytest.approx(2 ** -20)
        assert engine.margin == 1e-5  # 10 x 9.5e-7 is below the floor
    model.vqvae["encoder"].nudge = 2 ** -13
    with ExactEncoder(model) as engine:
        engine.calibrate([x.numpy()])
        assert engine.margin == pytest.approx(10 * 2 ** -13)
    with ExactEncoder(model, prior_deviation=2e-4) as engine:  # an earlier run saw more
        assert engine.margin == pytest.approx(2e-3)
        engine.calibrate([x.numpy()])
        assert engine.margin == pytest.approx(2e-3)


def test_pinned_threads_run_on_one_thread_and_leave_the_setting_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen_by_host_thread = []
        started, go, done = threading.Event(), threading.Event(), threading.Event()

        def host_thread():  # a thread of the host process that used torch before
            seen_by_host_thread.append(torch.get_num_threads())
            started.set()
            go.wait()
            seen_by_host_thread.append(torch.get_num_threads())
            done.set()

        threading.Thread(target=host_thread).start()
        started.wait()
        with PinnedThreads(2) as pinned:
            assert torch.get_num_threads() == 3  # restored before the constructor returned
            assert not pinned.held_globally
            seen = {pinned.submit(torch.get_num_threads).result() for _ in range(8)}
            assert seen == {1}
            go.set()
            done.wait()
        assert seen_by_host_thread == [3, 3]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_reference_encodes_one_motion_on_one_thread():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(quantizer="FSQ", nb_code=1024, width=32, code_dim=16,
                              output_emb_width=16, depth=2, down_t=2, input_dim=12))
    x = torch.randn(3, 16, 12)
    with ExactEncoder(model) as engine:
        with pytest.raises(Exception, match="one motion at a time"):
            engine.reference(x)
        alone = np.stack([engine.encode_one(row) for row in x])
        assert np.array_equal(engine.encode_batch(x.numpy()).codes, alone)
        assert np.array_equal(model.encode(x).numpy(), alone)


def test_concurrent_encodes_leave_the_thread_setting_as_it_was():
    """VQVAE.encode makes a short-lived ExactEncoder per call; from many threads at once their
    one-thread windows must not restore each other's setting."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(quantizer="FSQ", nb_code=256, width=16, code_dim=8,
                              output_emb_width=8, depth=1, down_t=1, input_dim=6))
    x = torch.randn(2, 8, 6)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        expected = model.encode(x)
        results = []
        threads = [threading.Thread(target=lambda: results.append(model.encode(x)))
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert torch.get_num_threads() == 3
        fresh = []  # a thread starting now copies the process-wide count
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [3]
        assert len(results) == 16 and all(torch.equal(r, expected) for r in results)
    finally:
        torch.set_num_threads(before)
