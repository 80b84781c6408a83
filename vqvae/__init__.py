"""The MotionMillion / T2M-GPT motion tokenizer: load original checkpoints, encode exactly like the original."""
from .checkpoint import CheckpointMismatchError, file_sha256, load_checkpoint
from .config import VQVAEConfig, VQVAEError
from .model import VQVAE
from .normalize import denormalize, normalize

__all__ = ["VQVAEConfig", "VQVAE", "load_checkpoint", "normalize", "denormalize", "VQVAEError",
           "CheckpointMismatchError", "file_sha256"]
