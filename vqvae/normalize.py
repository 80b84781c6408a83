"""Motion normalization exactly as the original dataset code does it.

The original computes `(motion - mean) / std` on numpy arrays with the dataset's float64
statistics (so in float64) and casts the result to float32 only when it reaches the model.
Rounding once at the end, not per step, is what makes the codes match.
"""
from __future__ import annotations

import numpy as np

from .config import VQVAEError


def normalize(motion, mean, std, out: np.ndarray | None = None) -> np.ndarray:
    """(T, D) motion -> (T, D) float32, computed with numpy's promotion of the inputs' dtypes, as
    the original's `(motion - mean) / std` is: float64 for the float64 statistics MotionMillion
    stores, float32 for float32 statistics (HumanML3D's Mean.npy). Written into `out` if given."""
    motion, mean, std = np.asarray(motion), np.asarray(mean), np.asarray(std)
    _check_shapes(motion, mean, std)
    x = (motion - mean) / std
    if out is None:
        return x.astype(np.float32)
    out[...] = x
    return out


def denormalize(x, mean, std) -> np.ndarray:
    """The inverse: (T, D) normalized motion -> x * std + mean, as float32."""
    x, mean, std = np.asarray(x), np.asarray(mean), np.asarray(std)
    _check_shapes(x, mean, std)
    return (x * std + mean).astype(np.float32)


def _check_shapes(x, mean, std):
    if mean.shape != std.shape or mean.ndim != 1 or x.shape[-1:] != mean.shape:
        raise VQVAEError(f"motion features {x.shape} do not match mean {mean.shape} / std {std.shape}")
