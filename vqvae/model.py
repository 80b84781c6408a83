"""The MotionMillion / T2M-GPT motion VQ-VAE in one file, loadable from the original checkpoints.

Module names and attribute names are the original's, because they are the state-dict names.
The encoder and FSQ follow the original op for op (including its transposes), so that the float
arithmetic, and therefore every code, is the same; the codebook search is the one deliberate
change (float64, see CodebookQuantizer.encode). What the original computes on every call and
encoding does not need (the commitment loss, the perplexity over a codebook-size one-hot) is gone.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import VQVAEConfig, VQVAEError

PRECISIONS = ("fp32", "tf32", "bf16")


class Decision(NamedTuple):
    """A batch's codes and what decided them. `variables` are the quantizer's decision variables
    per token (FSQ: the bounded values that are rounded, (B, T', levels); codebook: the encoder
    output searched, (B, T', C)); `slack` (B, T', float64) is how far each token's decision
    variables may move before its code can change, in the units `Quantizer.deviation` measures
    (see vqvae/exact.py, which turns this into codes equal to the original's)."""

    codes: torch.Tensor
    variables: torch.Tensor
    slack: torch.Tensor


# ---- building blocks ------------------------------------------------------------------------

class Patcher1D(nn.Module):
    """The wavelet patcher. With patch_size 1 (the only size the original can run) it has zero
    wavelet levels and is the identity; its two buffers are persistent, so checkpoints carry them."""

    WAVELETS = {"haar": [0.7071067811865476, 0.7071067811865476], "rearrange": [1.0, 1.0]}

    def __init__(self, patch_method: str):
        super().__init__()
        self.register_buffer("wavelets", torch.tensor(self.WAVELETS[patch_method]))
        self.register_buffer("_arange", torch.arange(2))

    def forward(self, x):
        return x


class UnPatcher1D(Patcher1D):
    """The decoder's inverse of Patcher1D: the identity too, with the same buffers."""


class SiLU(nn.Module):
    """x * sigmoid(x) written as the original writes it (bitwise the same as its output)."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "silu": SiLU, "gelu": nn.GELU}[name]()


def make_norm(kind: str | None, n: int) -> nn.Module:
    if kind == "LN":
        return nn.LayerNorm(n)
    if kind == "GN":
        return nn.GroupNorm(num_groups=32, num_channels=n, eps=1e-6, affine=True)
    if kind == "BN":
        return nn.BatchNorm1d(n, eps=1e-6, affine=True)
    return nn.Identity()


class ResConv1DBlock(nn.Module):
    """norm -> act -> dilated conv -> norm -> act -> 1x1 conv, plus the input."""

    def __init__(self, n: int, dilation: int, activation: str, norm: str | None, kernel_size: int):
        super().__init__()
        self.norm = norm
        self.norm1 = make_norm(norm, n)
        self.activation1 = make_activation(activation)
        self.conv1 = nn.Conv1d(n, n, kernel_size, 1, dilation * (kernel_size - 1) // 2, dilation)
        self.norm2 = make_norm(norm, n)
        self.activation2 = make_activation(activation)
        self.conv2 = nn.Conv1d(n, n, 1, 1, 0)

    def forward(self, x):
        x_orig = x
        if self.norm == "LN":  # LayerNorm normalizes the last axis: channels go last and back
            x = self.activation1(self.norm1(x.transpose(-2, -1)).transpose(-2, -1))
        else:
            x = self.activation1(self.norm1(x))
        x = self.conv1(x)
        if self.norm == "LN":
            x = self.activation2(self.norm2(x.transpose(-2, -1)).transpose(-2, -1))
        else:
            x = self.activation2(self.norm2(x))
        x = self.conv2(x)
        return x + x_orig


class Resnet1D(nn.Module):
    """`depth` residual blocks with dilations growth**d, in reversed order (largest first)."""

    def __init__(self, n: int, config: VQVAEConfig):
        super().__init__()
        blocks = [ResConv1DBlock(n, config.dilation_growth_rate ** d, config.vq_act, config.vq_norm,
                                 config.kernel_size) for d in range(config.depth)]
        self.model = nn.Sequential(*blocks[::-1])

    def forward(self, x):
        return self.model(x)


def _conv(c_in: int, c_out: int, config: VQVAEConfig) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, config.kernel_size, 1, (config.kernel_size - 1) // 2)


class Encoder(nn.Module):
    """(B, input_dim, T) -> (B, output_emb_width, T / 2**down_t)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        c = config
        blocks = [Patcher1D(c.patch_method)] if c.use_patcher else []
        blocks += [_conv(c.input_dim, c.width, c), nn.ReLU()]
        for _ in range(c.down_t):
            blocks.append(nn.Sequential(
                nn.Conv1d(c.width, c.width, 2 * c.stride_t, c.stride_t, c.stride_t // 2),
                Resnet1D(c.width, c)))
        blocks.append(_conv(c.width, c.output_emb_width, c))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


class Decoder(nn.Module):
    """(B, output_emb_width, T') -> (B, input_dim, T' * 2**down_t)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        c = config
        blocks = [_conv(c.output_emb_width, c.width, c), nn.ReLU()]
        for _ in range(c.down_t):
            blocks.append(nn.Sequential(
                Resnet1D(c.width, c),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv1d(c.width, c.width, 3, 1, 1)))
        blocks += [_conv(c.width, c.width, c), nn.ReLU(), _conv(c.width, c.input_dim, c)]
        if c.use_patcher:
            blocks.append(UnPatcher1D(c.patch_method))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


# ---- quantizers -----------------------------------------------------------------------------

class FSQ(nn.Module):
    """Finite scalar quantization: each of len(levels) projected channels is bounded by tanh and
    rounded to one of L levels; the code is the mixed-radix number of the level digits."""

    def __init__(self, levels: tuple[int, ...], dim: int):
        super().__init__()
        self.codebook_size = int(np.prod(levels))
        levels_t = torch.tensor(levels, dtype=torch.int32)
        # Constants computed by the original's expressions, so their float32 values are its values.
        half_l = (levels_t - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        for name, value in (("_levels", levels_t), ("_half_width", levels_t // 2),
                            ("_basis", torch.cumprod(torch.tensor((1,) + levels[:-1]), 0, dtype=torch.int32)),
                            ("_half_l", half_l), ("_offset", offset), ("_shift", (offset / half_l).atanh())):
            self.register_buffer(name, value, persistent=False)
        projected = dim != len(levels)
        self.project_in = nn.Linear(dim, len(levels)) if projected else nn.Identity()
        self.project_out = nn.Linear(len(levels), dim) if projected else nn.Identity()

    def encode(self, z):
        """(B, C, T') encoder output -> (B, T') int32 codes and their slack (see `decide`)."""
        decision = self.decide(z)
        return decision.codes, decision.slack

    def decide(self, z) -> Decision:
        """(B, C, T') encoder output -> Decision. The decision variable is the bounded value b of
        each channel; its code changes only when b crosses a half-integer, so a token's slack is
        the smallest distance of its channels' b to one (exact: computed in float64)."""
        z = self.project_in(z.transpose(1, 2).contiguous())  # the original packs with torch.cat: a copy
        with _autocast_off(z.device):
            z = z.float()
            return self.quantize((z + self._shift).tanh() * self._half_l - self._offset)

    def quantize(self, bounded) -> Decision:
        """(B, T', levels) bounded values -> Decision (the rounding step alone)."""
        with _autocast_off(bounded.device):
            rounded = bounded.round()
            # round() is exact here, and so is every step below: these are small integers, equal
            # to what the original's float path (divide by half width, scale back, sum) yields.
            digits = rounded.to(torch.int32) + self._half_width
            codes = (digits * self._basis).sum(dim=-1, dtype=torch.int32)
            slack = (0.5 - (bounded.double() - rounded.double()).abs()).amin(dim=-1)
        return Decision(codes, bounded, slack)

    @staticmethod
    def deviation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How far decision variables moved, per token: max |b_a - b_b| over the channels."""
        return _difference(a, b).amax(dim=-1)

    def decode(self, codes):
        """(B, T') codes -> (B, C, T') dequantized latents."""
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels
        q = (digits - self._half_width) / self._half_width
        return self.project_out(q).transpose(1, 2)


class CodebookQuantizer(nn.Module):
    """Nearest-codebook-row quantizers: ema_reset and ema keep `codebook` as a buffer, reset as a
    parameter, orig as `embedding.weight`."""

    def __init__(self, kind: str, nb_code: int, code_dim: int):
        super().__init__()
        self.kind = kind
        self.codebook_size = nb_code
        if kind == "orig":
            self.embedding = nn.Embedding(nb_code, code_dim)
        elif kind == "reset":
            self.codebook = nn.Parameter(torch.zeros(nb_code, code_dim))
        else:
            self.register_buffer("codebook", torch.zeros(nb_code, code_dim))

    @property
    def weight(self):
        return self.embedding.weight if self.kind == "orig" else self.codebook

    def encode(self, z):
        """(B, C, T') encoder output -> (B, T') int64 codes and their slack (see `decide`)."""
        decision = self.decide(z)
        return decision.codes, decision.slack

    def decide(self, z) -> Decision:
        """(B, C, T') encoder output -> Decision: argmin |x|^2 - 2 x.c + |c|^2 over the rows.

        The original evaluates this in float32, where near-ties (gaps of ~1e-7) resolve by the
        BLAS kernel's rounding, which varies with the CPU and even with the number of rows in the
        matmul (so with the batch size). Evaluated in float64 the argmin is the true nearest row
        of the float32 encoder output: the same on every machine and batch, and it matches the
        golden codes where float32 on this machine does not.

        Slack, by the triangle inequality: moving x by |dx| moves its distance to EVERY row by at
        most |dx|, so the nearest row cannot change while |dx| < (sqrt(d2) - sqrt(d1)) / 2, d1 and
        d2 the two smallest squared distances. It is given relative to |x| (deviation measures
        |dx| / |x|), so a token is safe while its relative deviation stays below its slack."""
        with _autocast_off(z.device):
            return self.quantize(z.permute(0, 2, 1).float())

    def quantize(self, rows) -> Decision:
        """(B, T', C) encoder output -> Decision (the nearest-row search alone)."""
        batch, channels = rows.shape[0], rows.shape[2]
        with _autocast_off(rows.device):
            x = rows.reshape(-1, channels).double()
            c = self.weight.double()
            distance = x.pow(2).sum(1, keepdim=True) - 2 * (x @ c.t()) + c.pow(2).sum(1)
            codes = distance.argmin(dim=1)
            if len(c) == 1:  # a single row is never contested
                slack = torch.full_like(x[:, 0], float("inf"))
            else:
                best = distance.topk(2, dim=1, largest=False).values.clamp(min=0).sqrt()
                gap = (best[:, 1] - best[:, 0]) / 2
                norm = x.norm(dim=1)
                slack = torch.where(norm > 0, gap / norm, torch.where(gap > 0, float("inf"), 0.0))
        return Decision(codes.view(batch, -1), rows, slack.view(batch, -1))

    @staticmethod
    def deviation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """How far decision variables moved, per token, relative to the first: |x_a - x_b| / |x_a|."""
        moved = _difference(a, b).pow(2).sum(dim=-1).sqrt()
        norm = a.double().pow(2).sum(dim=-1).sqrt()
        return torch.where(norm > 0, moved / norm, torch.where(moved > 0, float("inf"), 0.0))

    def decode(self, codes):
        return F.embedding(codes, self.weight).transpose(1, 2)


def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float64, 0 where both are the same value (inf == inf, both NaN), inf where only
    one of them is NaN: a deviation that cannot be measured is never taken for a small one."""
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    same = (a == b) | (a.isnan() & b.isnan())
    return torch.where(same, 0.0, diff.nan_to_num(nan=float("inf")))


def _autocast_off(device: torch.device):
    """The quantizer always runs in full precision, even inside an autocast region (as the original's FSQ)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


# ---- the model ------------------------------------------------------------------------------

class VQVAE(nn.Module):
    """The tokenizer. State-dict keys are `vqvae.{encoder,decoder,quantizer}.*` as in HumanVQVAE."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self._config = config
        if config.quantizer == "FSQ":
            quantizer = FSQ(config.fsq_levels, config.code_dim)
        else:
            quantizer = CodebookQuantizer(config.quantizer, config.nb_code, config.code_dim)
        self.vqvae = nn.ModuleDict({"encoder": Encoder(config), "decoder": Decoder(config),
                                    "quantizer": quantizer})
        self.eval()  # an inference model: BatchNorm must use its running statistics

    # properties the rest of tokstore reads
    @property
    def config(self) -> VQVAEConfig:
        return self._config

    @property
    def codebook_size(self) -> int:
        return self.vqvae["quantizer"].codebook_size

    @property
    def end_token(self) -> int:
        return self.codebook_size

    @property
    def pad_token(self) -> int:
        return self.codebook_size + 1

    @property
    def code_dtype(self) -> np.dtype:
        return self._config.code_dtype

    @property
    def unit_length(self) -> int:
        return self._config.unit_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: torch.Tensor, precision: str = "fp32", batch_exact: bool = True) -> torch.Tensor:
        """(B, T, input_dim) normalized motion, T a multiple of unit_length -> (B, T / unit) codes
        (int32 for FSQ, int64 otherwise), on x's device.

        precision: "fp32" is IEEE float32 throughout, the original's arithmetic on CPU (on CUDA it
        also turns off cuDNN's default TF32 convolutions for the call); "tf32" allows TF32 matmuls
        and convolutions on CUDA for the call (on CPU it is fp32); "bf16" runs the encoder under
        autocast, the quantizer in float32 as the original's does.

        batch_exact (CPU fp32, the default): the codes the original gets for each motion alone,
        through vqvae.exact.ExactEncoder (one intra-op thread, rows near a decision boundary
        encoded again alone) with its uncalibrated default margin; a build calibrates its own.
        Otherwise the batch's codes as this device's kernels compute them.
        """
        self._check_input(x, precision)
        if batch_exact and precision == "fp32" and x.device.type == "cpu":
            from .exact import ExactEncoder

            with ExactEncoder(self) as engine:
                return torch.from_numpy(engine.encode_batch(x.numpy(force=True)).codes)
        return self.decide(x, precision).codes.clone()

    def decide(self, x: torch.Tensor, precision: str = "fp32") -> Decision:
        """The batch's Decision as this device's kernels compute it, in the calling thread's
        intra-op threads: codes, decision variables, slack (see Decision)."""
        self._check_input(x, precision)
        with torch.inference_mode(), _precision(precision, x.device):
            h = self.vqvae["encoder"](x.permute(0, 2, 1).float())  # the original's preprocess
            decision = self.vqvae["quantizer"].decide(h)
        # ordinary tensors: inference tensors refuse later in-place edits
        return Decision(*(t.clone() for t in decision))

    def quantize(self, variables: torch.Tensor) -> Decision:
        """The Decision that decision variables (as Decision.variables) give: how an encoder whose
        variables moved would decide (tests inject inexact encoders with it)."""
        with torch.inference_mode():
            return Decision(*(t.clone() for t in self.vqvae["quantizer"].quantize(variables)))

    def deviation(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per token, how far the decision variables `b` lie from `a` (the quantizer's measure)."""
        return self.vqvae["quantizer"].deviation(a, b)

    def _check_input(self, x, precision: str) -> None:
        if precision not in PRECISIONS:
            raise VQVAEError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if not torch.is_tensor(x) or x.ndim != 3 or x.shape[-1] != self._config.input_dim:
            raise VQVAEError(f"expected a (batch, frames, {self._config.input_dim}) tensor, got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if x.shape[1] == 0 or x.shape[1] % self.unit_length:
            raise VQVAEError(f"frame count {x.shape[1]} is not a positive multiple of the unit length "
                             f"{self.unit_length}; crop it first")
        if not x.is_floating_point():
            raise VQVAEError(f"expected a float tensor, got {x.dtype}")

    def decode(self, codes) -> torch.Tensor:
        """(B, T') codes -> (B, T' * unit, input_dim) float32 motion in normalized space."""
        codes = torch.as_tensor(codes, device=self.device)
        if codes.ndim != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise VQVAEError(f"expected a (batch, tokens) integer array, got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise VQVAEError(f"codes must lie in [0, {self.codebook_size}); got "
                             f"[{int(codes.min())}, {int(codes.max())}] (end/pad tokens cannot be decoded)")
        with torch.inference_mode():
            latents = self.vqvae["quantizer"].decode(codes).contiguous()
            motion = self.vqvae["decoder"](latents).permute(0, 2, 1)
        return motion.clone(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _precision(precision: str, device: torch.device):
    """bf16 autocast, or the CUDA float32 matmul/conv precision, for one call; restored after
    (it is process-global state, so concurrent calls in threads would see each other's setting)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":  # TF32 exists only on CUDA: on CPU tf32 is fp32
        yield
        return
    tf32 = precision == "tf32"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        mode = "tf32" if tf32 else "ieee"
        settings = [(torch.backends.cuda.matmul, "fp32_precision", mode),
                    (torch.backends.cudnn.conv, "fp32_precision", mode)]
    else:
        settings = [(torch.backends.cuda.matmul, "allow_tf32", tf32), (torch.backends.cudnn, "allow_tf32", tf32)]
    saved = [getattr(owner, name) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved):
            setattr(owner, name, value)
