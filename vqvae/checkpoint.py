"""Load an original MotionMillion / T2M-GPT checkpoint into `VQVAE`, or say exactly why it does not fit.

A checkpoint stores no config, so a wrong flag is the usual failure. On a mismatch the error
reads the flags the checkpoint was trained with off its tensor shapes and names the ones that differ.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import struct
import warnings
from pathlib import Path

import torch

from .config import FSQ_LEVELS, VQVAEConfig, VQVAEError, flag_name
from .model import VQVAE

# What torch.load(weights_only=True) raises for a file that is not a checkpoint, is damaged or is
# hostile, as found by feeding torch 2.x truncated, bit-flipped and spliced checkpoints of both
# formats: the weights-only unpickler's refusals (UnpicklingError), the zip reader's RuntimeError,
# a short file's EOFError, and what half-valid records make torch's rebuild code raise (bad UTF-8
# or numbers: ValueError; a dangling memo or storage key: KeyError, IndexError, AssertionError;
# struct.error; a rebuild call given the wrong arguments: TypeError, AttributeError). OSError: the
# file could not be read at all.
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, LookupError,
                     AssertionError, struct.error, TypeError, AttributeError, OSError)


class CheckpointMismatchError(VQVAEError):
    """The checkpoint's tensors do not fit the model built from the config."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 wrong_shape: list[str], likely_flags: dict[str, tuple]):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_shape = wrong_shape
        self.likely_flags = likely_flags  # flag -> (config value, checkpoint value)


def load_checkpoint(path, config: VQVAEConfig, device="cpu") -> VQVAE:
    """Build `VQVAE(config)`, load the checkpoint's weights strictly, return it in eval mode."""
    state = read_state_dict(path)
    model = VQVAE(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise _mismatch_error(path, config, state, expected, missing, unexpected, wrong_shape)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file ({'net': ...} or a bare state dict), `module.` stripped.
    Opened with weights_only=True: a checkpoint is untrusted input."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise VQVAEError(f"{path}: checkpoint is not a regular file (a FIFO, device or directory)")
    try:
        with warnings.catch_warnings():  # torch warns about the very pickles it then refuses
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:  # each means "cannot read or cannot trust this file"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VQVAEError(f"cannot load {path} as a torch checkpoint with weights_only=True "
                         f"(not a checkpoint, or it holds more than tensors): {first_line}") from None
    state = obj.get("net", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise VQVAEError(f"{path} holds no state dict of tensors (found {keys}); "
                         "expected {'net': state_dict} or a bare state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be large); for provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ---- reading the config back off the tensors -------------------------------------------------

def flags_from_state_dict(state: dict[str, torch.Tensor]) -> dict:
    """The config fields a state dict reveals (shapes and key names), by original flag name.

    vq_act and dilation_growth_rate leave no trace in the weights; LN and GN look alike.
    """
    flags: dict = {}
    enc = "vqvae.encoder.model."
    flags["use_patcher"] = f"{enc}0.wavelets" in state
    first = state.get(f"{enc}{1 if flags['use_patcher'] else 0}.weight")
    if first is not None and first.ndim == 3:
        flags["width"], flags["input_dim"], flags["kernel_size"] = first.shape
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(enc) + r"(\d+)\.1\.model\.", k))})
    flags["down_t"] = len(levels)
    if levels:
        flags["depth"] = len({k.split(".")[6] for k in state if k.startswith(f"{enc}{levels[0]}.1.model.")})
        last = state.get(f"{enc}{levels[-1] + 1}.weight")
    else:
        last = state.get(f"{enc}{2 + flags['use_patcher']}.weight")
    if last is not None and last.ndim == 3:
        flags["output_emb_width"] = last.shape[0]
    if any(k.endswith("norm1.running_mean") for k in state):
        flags["vq_norm"] = "BN"
    elif any(k.endswith("norm1.weight") for k in state):
        flags["vq_norm"] = "LN or GN"
    else:
        flags["vq_norm"] = None

    q = "vqvae.quantizer."
    table = state.get(f"{q}codebook", state.get(f"{q}embedding.weight"))
    if table is not None and table.ndim == 2:
        flags["quantizer"] = "ema_reset, ema or reset" if f"{q}codebook" in state else "orig"
        flags["nb_code"], flags["code_dim"] = table.shape
    elif f"{q}project_in.weight" in state:
        n_levels, flags["code_dim"] = state[f"{q}project_in.weight"].shape
        flags["quantizer"] = "FSQ"
        flags["nb_code"] = " or ".join(str(n) for n, lv in FSQ_LEVELS.items() if len(lv) == n_levels)
    elif not any(k.startswith(q) for k in state):
        flags["quantizer"] = "FSQ"  # FSQ without projections has no tensors at all
    return flags


def _differs(field: str, config_value, ckpt_value) -> bool:
    if field == "quantizer":
        return config_value not in {s.strip() for s in re.split(r",| or ", ckpt_value)}
    if field == "nb_code" and isinstance(ckpt_value, str):
        return str(config_value) not in ckpt_value.split(" or ")
    if field == "vq_norm" and ckpt_value == "LN or GN":
        return config_value not in ("LN", "GN")
    return config_value != ckpt_value


def _abbreviate(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _mismatch_error(path, config, state, expected, missing, unexpected, wrong_shape):
    found = flags_from_state_dict(state)
    likely = {f: (getattr(config, f), v) for f, v in found.items()
              if hasattr(config, f) and _differs(f, getattr(config, f), v)}
    if likely:
        diagnosis = "most likely differing flags: " + "; ".join(
            f"{flag_name(f)} (config {c!r}, checkpoint {v!r})" for f, (c, v) in likely.items())
    else:
        diagnosis = "no flag difference could be read off the shapes"
    parts = [f"checkpoint {path} does not fit the config: {diagnosis}"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_abbreviate(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_abbreviate(unexpected)}")
    if wrong_shape:
        parts.append(f"wrong-shape keys ({len(wrong_shape)}): " + _abbreviate(
            [f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong_shape]))
    return CheckpointMismatchError(". ".join(parts), missing, unexpected, wrong_shape, likely)
