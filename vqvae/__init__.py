"""The MotionMillion / T2M-GPT motion tokenizer: load original checkpoints, encode exactly like the original.

Names resolve on first use (PEP 562), so that reading a store's errors or config does not import
torch: `tokstore info` and the other read commands never load the network."""
from importlib import import_module

_HOMES = {"VQVAEConfig": "config", "VQVAEError": "config", "VQVAE": "model",
          "load_checkpoint": "checkpoint", "CheckpointMismatchError": "checkpoint",
          "file_sha256": "checkpoint", "normalize": "normalize", "denormalize": "normalize"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'vqvae' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
