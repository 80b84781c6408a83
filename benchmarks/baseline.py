"""A faithful re-creation of the original get-codes step, the baseline the benchmarks measure against.

MotionMillion's train_t2m_get_codes.py feeds the tokenizer one motion at a time (a DataLoader with
batch size 1 over a dataset that crops and normalizes in numpy, with the on-disk dtypes of motion
and statistics: float64 for MotionMillion's statistics, float32 for HumanML3D's), calls `net.encode` under
no_grad, appends the end token, counts codes with torch.unique and a Python loop, and saves each
motion's codes. For FSQ, `encode` runs the quantizer's full forward: it also projects back out and
computes a perplexity through a codebook_size x tokens one-hot matrix, on every motion.
The encoder is vqvae's own (it is op-for-op the original's); everything after it is re-created here.
"""
from __future__ import annotations

import numpy as np
import torch

from vqvae import VQVAE


def original_dataset_item(motion: np.ndarray, mean: np.ndarray, std: np.ndarray, unit_length: int) -> torch.Tensor:
    """What the original DataLoader yields for one motion (crop start 0): a (1, m, D) tensor of
    numpy's promotion of the dtypes given (float64 stats: float64; float32 stats and motion: float32)."""
    frames = len(motion) // unit_length * unit_length
    return torch.from_numpy((motion[:frames] - mean) / std)[None]


def original_fsq_forward(fsq, z):
    """The original FSQ.forward on (B, C, T'): returns (out, indices, loss, perplexity, activate, indices)."""
    batch = z.shape[0]
    z = torch.cat([z.permute(0, 2, 1)], dim=1)  # rearrange 'b d n -> b n d', then einops pack (a torch.cat)
    z = fsq.project_in(z).unsqueeze(2)  # 'b n (c d) -> b n c d'
    levels = fsq._levels
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    bounded = (z.float() + (offset / half_l).atanh()).tanh() * half_l - offset
    quantized = bounded + (bounded.round() - bounded).detach()  # round with a straight-through gradient
    half_width = levels // 2
    codes = quantized / half_width
    indices = ((codes * half_width + half_width) * fsq._basis).sum(dim=-1).to(torch.int32)
    out = fsq.project_out(codes.reshape(batch, -1, len(levels))).permute(0, 2, 1)
    indices = indices.squeeze(-1)
    perplexity, activate = original_perplexity(indices.reshape(-1).to(torch.int64), fsq.codebook_size)
    return out, indices, torch.tensor(0.0, device=indices.device), perplexity, activate, indices


def original_perplexity(code_idx, codebook_size):
    """FSQ.compute_perplexity: a codebook_size x tokens one-hot, summed, turned into an entropy."""
    code_onehot = torch.zeros(codebook_size, code_idx.shape[0], device=code_idx.device)
    code_onehot.scatter_(0, code_idx.view(1, code_idx.shape[0]), 1)
    code_count = code_onehot.sum(dim=-1)
    prob = code_count / torch.sum(code_count)
    perplexity = torch.exp(-torch.sum(prob * torch.log(prob + 1e-7)))
    activate = torch.sum(code_count > 0).float() / codebook_size
    return perplexity, activate


def original_encode(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """VQVAE_251.encode: (N, T, D) -> (N, T') codes, the original way."""
    n = x.shape[0]
    x_encoder = model.vqvae["encoder"](x.permute(0, 2, 1).float())
    quantizer = model.vqvae["quantizer"]
    if model.config.quantizer == "FSQ":
        _, code_idx, _, _, _, _ = original_fsq_forward(quantizer, x_encoder)
        return code_idx.view(n, -1)
    x_encoder = x_encoder.permute(0, 2, 1).contiguous().view(-1, x_encoder.shape[1])
    k_w = quantizer.weight.t()
    distance = torch.sum(x_encoder ** 2, dim=-1, keepdim=True) - 2 * torch.matmul(x_encoder, k_w) + torch.sum(
        k_w ** 2, dim=0, keepdim=True)
    return torch.min(distance, dim=-1).indices.view(n, -1)


class OriginalGetCodes:
    """The body of the original get-codes loop, one motion per call, with its code counting."""

    def __init__(self, model: VQVAE):
        self.model = model
        self.nb_code = model.codebook_size  # the original sets args.nb_code to the real size
        self.code_counts = torch.zeros(self.nb_code + 2, dtype=torch.long)
        self.total_tokens = 0

    def __call__(self, pose: torch.Tensor) -> np.ndarray:
        pose = pose.to(self.model.device).float()
        with torch.no_grad():
            target = original_encode(self.model, pose)
            end = torch.ones(target.shape[0], 1).to(target.device) * self.nb_code
            target_with_end = torch.cat([target, end], dim=1)
            unique_codes, counts = torch.unique(target_with_end, return_counts=True)
            for code, count in zip(unique_codes, counts):
                self.code_counts[code.long()] += count.item()
            self.total_tokens += target_with_end.numel()
            return target.cpu().numpy()

    def probs(self) -> torch.Tensor:
        return self.code_counts.float() / self.total_tokens
