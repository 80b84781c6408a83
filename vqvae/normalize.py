"""Motion normalization exactly as the original dataset code does it.

The original computes `(motion - mean) / std` on numpy arrays with the dataset's float64
statistics (so in float64) and casts the result to float32 only when it reaches the model.
Rounding once at the end, not per step, is what makes the codes match.
"""
from __future__ import annotations

import numpy as np

from .config import VQVAEError


def normalize(motion, mean, std) -> np.ndarray:
    """(T, D) motion -> (T, D) float32, computed with numpy's promotion of the inputs' dtypes
    (float64 for the float64 statistics the original stores)."""
    motion, mean, std = np.asarray(motion), np.asarray(mean), np.asarray(std)
    _check_shapes(motion, mean, std)
    return ((motion - mean) / std).astype(np.float32)


def denormalize(x, mean, std) -> np.ndarray:
    """The inverse: (T, D) normalized motion -> x * std + mean, as float32."""
    x, mean, std = np.asarray(x), np.asarray(mean), np.asarray(std)
    _check_shapes(x, mean, std)
    return (x * std + mean).astype(np.float32)


def _check_shapes(x, mean, std):
    if mean.shape != std.shape or mean.ndim != 1 or x.shape[-1:] != mean.shape:
        raise VQVAEError(f"motion features {x.shape} do not match mean {mean.shape} / std {std.shape}")
