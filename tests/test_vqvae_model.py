"""VQVAE built from configs: shapes, quantizers, precision modes, input checks, normalization."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqvae import VQVAE, VQVAEConfig, VQVAEError, denormalize, normalize
from vqvae.config import FSQ_LEVELS
from vqvae.exact import ExactEncoder
from vqvae.model import FSQ, CodebookQuantizer


def tiny(**overrides) -> VQVAEConfig:
    fields = dict(width=32, code_dim=16, output_emb_width=16, depth=2, down_t=2, input_dim=12)
    return VQVAEConfig(**{**fields, **overrides})


def test_motionmillion_preset_builds_the_production_shapes():
    model = VQVAE(VQVAEConfig.preset("motionmillion"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["vqvae.encoder.model.0.wavelets"] == (2,)
    assert shapes["vqvae.encoder.model.1.weight"] == (512, 272, 3)
    assert shapes["vqvae.encoder.model.3.0.weight"] == (512, 512, 4)
    assert shapes["vqvae.encoder.model.3.1.model.2.norm1.weight"] == (512,)
    assert shapes["vqvae.quantizer.project_in.weight"] == (6, 512)
    assert shapes["vqvae.decoder.model.5.weight"] == (272, 512, 3)
    assert "vqvae.decoder.model.6._arange" in shapes
    # the reversed dilations: the first block of a level has the largest dilation (3**2)
    assert model.vqvae["encoder"].model[3][1].model[0].conv1.dilation == (9,)
    codes = model.encode(torch.randn(2, 8, 272))
    assert codes.dtype == torch.int32 and codes.shape == (2, 4)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64000
    assert model.decode(codes).shape == (2, 8, 272)
    assert (model.codebook_size, model.end_token, model.pad_token) == (64000, 64000, 64001)


def test_t2m_gpt_preset_builds_the_production_shapes():
    model = VQVAE(VQVAEConfig.preset("t2m-gpt"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["vqvae.quantizer.codebook"] == (512, 512)
    assert shapes["vqvae.encoder.model.0.weight"] == (512, 263, 3)
    assert "vqvae.encoder.model.3.1.model.2.conv2.weight" in shapes
    assert not any("norm" in k or "wavelets" in k for k in shapes)
    codes = model.encode(torch.randn(1, 8, 263))
    assert codes.dtype == torch.int64 and codes.shape == (1, 2)
    assert model.decode(codes).shape == (1, 8, 263)
    assert model.code_dtype == np.int64 and model.unit_length == 4


def original_fsq_indices(z, levels):
    """The original FSQ's float path: bound, round, normalize, scale back, weigh by the basis."""
    levels_t = torch.tensor(levels, dtype=torch.int32)
    half_l = (levels_t - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
    bounded = (z + (offset / half_l).atanh()).tanh() * half_l - offset
    quantized = bounded + (bounded.round() - bounded)
    half_width = levels_t // 2
    codes = quantized / half_width
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0, dtype=torch.int32)
    return ((codes * half_width + half_width) * basis).sum(dim=-1).to(torch.int32), codes


@pytest.mark.parametrize("levels", sorted(FSQ_LEVELS.values()))
def test_fsq_matches_the_original_float_path_on_every_table(levels):
    torch.manual_seed(0)
    fsq = FSQ(levels, len(levels))  # no projections: the quantizer sees z directly
    z = torch.cat([torch.randn(4096, len(levels)) * 3, torch.linspace(-6, 6, 4096)[:, None].expand(-1, len(levels))])
    codes = fsq.encode(z.T[None])[0][0]
    expected, normalized = original_fsq_indices(z, levels)
    assert codes.dtype == torch.int32
    assert torch.equal(codes, expected)
    basis = np.cumprod((1,) + levels[:-1])
    for channel, level in enumerate(levels):  # the inputs reach every level of every channel
        assert set((codes.numpy() // basis[channel] % level).tolist()) == set(range(level))
    assert torch.equal(fsq.decode(codes[None])[0].T, normalized)


@pytest.mark.parametrize("kind, key", [("ema_reset", "codebook"), ("ema", "codebook"),
                                       ("reset", "codebook"), ("orig", "embedding.weight")])
def test_codebook_quantizers_pick_the_nearest_row_and_decode_to_it(kind, key):
    torch.manual_seed(1)
    quantizer = CodebookQuantizer(kind, 64, 8)
    assert list(quantizer.state_dict()) == [key]
    quantizer.load_state_dict({key: torch.randn(64, 8)})
    z = torch.randn(3, 8, 10)
    codes, _ = quantizer.encode(z)
    rows = z.permute(0, 2, 1).reshape(-1, 8)
    nearest = torch.cdist(rows.double(), quantizer.weight.double()).argmin(dim=1).view(3, 10)
    assert codes.dtype == torch.int64 and torch.equal(codes, nearest)
    assert torch.equal(quantizer.decode(codes), quantizer.weight[codes].transpose(1, 2))


@pytest.mark.parametrize("norm, act", [("LN", "relu"), ("GN", "silu"), ("BN", "gelu"), (None, "silu")])
def test_every_norm_and_activation_runs_and_batches_exactly(norm, act):
    torch.manual_seed(2)
    model = VQVAE(tiny(vq_norm=norm, vq_act=act, quantizer="FSQ", nb_code=1024))
    x = torch.randn(3, 16, 12)
    codes = model.encode(x)
    assert codes.shape == (3, 4)
    assert torch.equal(codes, torch.cat([model.encode(row[None]) for row in x]))
    keys = model.state_dict()
    assert ("vqvae.encoder.model.2.1.model.0.norm1.running_var" in keys) == (norm == "BN")
    assert ("vqvae.encoder.model.2.1.model.0.norm1.weight" in keys) == (norm is not None)


def test_precision_modes_and_no_leaked_global_state():
    torch.manual_seed(3)
    model = VQVAE(tiny(quantizer="ema_reset", nb_code=32))
    x = torch.randn(2, 16, 12)
    fp32 = model.encode(x)
    assert torch.equal(model.encode(x, precision="tf32"), fp32)  # TF32 exists only on CUDA
    bf16 = model.encode(x, precision="bf16")
    assert bf16.dtype == torch.int64 and bf16.shape == fp32.shape
    assert (bf16 == fp32).float().mean() > 0.5  # close to fp32, not necessarily equal
    assert not torch.is_autocast_enabled("cpu") and not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    fp32 += 0  # an ordinary tensor, not an inference tensor that refuses in-place edits
    with pytest.raises(VQVAEError, match="precision must be one of"):
        model.encode(x, precision="fp16")


def test_encode_and_decode_reject_bad_input():
    model = VQVAE(tiny(quantizer="FSQ", nb_code=256))
    with pytest.raises(VQVAEError, match="not a positive multiple of the unit length 4"):
        model.encode(torch.randn(1, 10, 12))
    with pytest.raises(VQVAEError, match=r"expected a \(batch, frames, 12\) tensor"):
        model.encode(torch.randn(10, 12))
    with pytest.raises(VQVAEError, match="expected a float tensor"):
        model.encode(torch.zeros(1, 8, 12, dtype=torch.int64))
    with pytest.raises(VQVAEError, match=r"codes must lie in \[0, 240\)"):
        model.decode(torch.tensor([[3, model.end_token]]))
    with pytest.raises(VQVAEError, match="integer array"):
        model.decode(torch.zeros(1, 3))
    assert model.decode(np.array([[0, 239]], dtype=np.int32)).shape == (1, 8, 12)


def test_normalize_is_float64_arithmetic_rounded_once():
    rng = np.random.default_rng(4)
    motion = rng.normal(size=(50, 12)).astype(np.float32)
    mean, std = rng.normal(size=12), rng.uniform(0.01, 2, size=12)
    x = normalize(motion, mean, std)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, ((motion.astype(np.float64) - mean) / std).astype(np.float32))
    in_float32 = (motion - mean.astype(np.float32)) / std.astype(np.float32)
    assert (x != in_float32).any()  # single precision arithmetic would round differently
    back = denormalize(x, mean, std)
    assert back.dtype == np.float32 and np.allclose(back, motion, atol=1e-5)
    with pytest.raises(VQVAEError, match="do not match mean"):
        normalize(motion, mean[:5], std[:5])


def test_cuda_precision_settings_hold_only_within_the_call():
    """The TF32 switches are global torch state: set for one encode call, restored after."""
    from vqvae.model import _precision

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with _precision("tf32", torch.device("cuda")):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    with pytest.raises(RuntimeError, match="boom"), _precision("fp32", torch.device("cuda")):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        raise RuntimeError("boom")
    assert (matmul.fp32_precision, conv.fp32_precision) == before


class BatchSensitiveEncoder(torch.nn.Module):
    """Stands in for a kernel that rounds a batch differently: it nudges the output of batches.
    Its latents are the first code_dim features at every unit-th frame."""

    def __init__(self, channels: int, unit: int, nudge: float):
        super().__init__()
        self.channels, self.unit, self.nudge = channels, unit, nudge

    def forward(self, x):  # (B, D, T) -> (B, channels, T / unit)
        return x[:, :self.channels, ::self.unit] + (self.nudge if len(x) > 1 else 0.0)


@pytest.mark.parametrize("quantizer", ["FSQ", "ema_reset"])
def test_batched_rows_near_a_boundary_get_the_codes_they_get_alone(quantizer):
    config = tiny(quantizer=quantizer, nb_code=256, code_dim=3, output_emb_width=3, down_t=1)
    model = VQVAE(config)
    model.vqvae["encoder"] = BatchSensitiveEncoder(3, 2, nudge=1e-5 if quantizer == "FSQ" else -1e-5)
    x = torch.zeros(3, 4, 12)
    x[:, :, :3] = torch.tensor([0.9, -0.4, 0.3])  # far from every boundary
    if quantizer == "FSQ":  # channel 0 has 8 levels: bounded value just below the 0 / 1 boundary
        half_l, offset = 7 * 1.001 / 2, 0.5
        x[1, 2, 0] = float(np.arctanh((0.5 - 1e-7 + offset) / half_l) - np.arctanh(offset / half_l))
    else:  # two codebook rows mirror each other across x = 0; token (1, 1) sits a hair to the right
        codebook = torch.randn(256, 3) + 5
        codebook[:2] = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 0.5, 0.0]])
        model.vqvae["quantizer"].codebook.copy_(codebook)
        x[:, :, :3] = torch.tensor([0.1, 0.5, 0.0])
        x[1, 2, 0] = 1e-9
    alone = torch.cat([model.encode(row[None]) for row in x])
    assert not torch.equal(model.encode(x, batch_exact=False), alone)  # the nudge flips one token
    with ExactEncoder(model) as engine:  # calibrated on the batch: the nudge is what it measures
        engine.calibrate([x.numpy()])
        assert engine.margin > 1e-5
        assert torch.equal(torch.from_numpy(engine.encode_batch(x.numpy()).codes), alone)
    assert torch.equal(model.encode(x, batch_exact=False)[[0, 2]], alone[[0, 2]])
