"""The MotionMillion / T2M-GPT motion tokenizer: load original checkpoints, encode exactly like the original.

The network's names resolve on first use (PEP 562), so that reading a store's errors or config
does not import torch: `tokstore info` and the other read commands never load the network."""
from importlib import import_module

# numpy only: bound now, so the function `normalize` (not its module) is vqvae.normalize
from .config import VQVAEConfig, VQVAEError
from .normalize import denormalize, normalize

_NEEDS_TORCH = {"VQVAE": "model", "load_checkpoint": "checkpoint",
                "CheckpointMismatchError": "checkpoint", "file_sha256": "checkpoint"}

__all__ = ["VQVAEConfig", "VQVAE", "load_checkpoint", "normalize", "denormalize", "VQVAEError",
           "CheckpointMismatchError", "file_sha256"]


def __getattr__(name: str):
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module 'vqvae' has no attribute {name!r}")
    value = getattr(import_module(f".{_NEEDS_TORCH[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
