"""What a build is asked to do and where it runs: BuildOptions and BuildSummary, the checks of
the options, the device choice, and the exactness mode (exact, or which inexact kind) that a device
and precision give.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from vqvae import VQVAEConfig

from .errors import TokstoreError
from .sources import SourceLayout

PRECISIONS = ("fp32", "tf32", "bf16")
ON_ERROR = ("fail", "skip")
# (precision and device decide whether codes are exact: see encode_mode and build_plan's _refuse_mixed)
EXACT = "exact"
# frames per encoder batch by device: CPU convolutions slow down once a batch's activations
# outgrow the caches (~11k frames/s at 32k frames vs 15-27k at 3-16k, width 512), a GPU fills up
BATCH_FRAMES = {"cpu": 8192, "cuda": 131072}


class BuildError(TokstoreError):
    """The build cannot start or go on: bad input, or a store it must not extend."""


def encode_mode(device: torch.device, precision: str) -> str:
    """"exact" where the codes equal the original's by construction (fp32 through vqvae.exact:
    on CPU, or on CUDA with the CPU re-check), else "inexact <device> <precision>": two inexact
    modes give different codes too."""
    exact = precision == "fp32" and device.type in ("cpu", "cuda")
    return EXACT if exact else f"inexact {device.type} {precision}"


def mode_line(mode: str, device: torch.device) -> str:
    if mode == EXACT and device.type == "cuda":
        return ("codes: exact (CUDA fp32 checked on the CPU): every token within a margin of a "
                "decision boundary, calibrated GPU against CPU at start, is re-encoded by the CPU "
                "exact path (whole motion, alone, one thread)")
    if mode == EXACT:
        return ("codes: exact (CPU fp32): each motion gets the codes the original gets for it "
                "alone; batched rows near a decision boundary are re-encoded alone, with a margin "
                "calibrated on this machine at start")
    return (f"codes: NOT exact ({mode.removeprefix('inexact ')}): a few tokens may differ from the "
            "original's; --device cpu --precision fp32 gives exact codes")


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


@dataclass
class BuildOptions:
    layout: SourceLayout
    checkpoint: Path
    model: VQVAEConfig
    store: str
    backend: str | None = None  # None: hdf5 for a path ending in .h5/.hdf5, else zarr
    device: str = "auto"  # auto: cuda if present
    precision: str = "fp32"
    workers: int = 2  # DataLoader processes loading motions; 0 loads in this process
    batch_frames: int | None = None  # frames per encoder batch (None: BATCH_FRAMES by device)
    window: int = 4096  # consecutive split entries loaded, sorted by length and batched together
    commit_every: int = 50_000  # motions; commits happen at the first window end past it
    on_error: str = "fail"
    progress: bool = True
    allow_mixed_codes: bool = False  # resume a store whose codes were made in another mode
    log: Callable[[str], None] = field(default=_stderr, repr=False)


@dataclass
class BuildSummary:
    store: str
    samples: int  # in the store now
    codes: int  # codes in the store now (the end tokens, one per sample, not counted)
    motions: int  # encoded by this run
    frames: int  # encoded by this run (after cropping)
    skipped: list[dict]  # {name, path, reason} of every split entry left out
    seconds: float
    resumed_from: int = 0  # samples the store held before this run
    already_complete: bool = False
    rank: int = 0  # under torchrun only rank 0's summary describes the store


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" is cuda when present; a bare "cuda" under torchrun is this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BuildError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BuildError(f"device {name}: no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def check_options(options: BuildOptions) -> None:
    for name, value, choices in (("precision", options.precision, PRECISIONS),
                                 ("on_error", options.on_error, ON_ERROR)):
        if value not in choices:
            raise BuildError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    for name in ("batch_frames", "window", "commit_every"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise BuildError(f"{name} must be a positive number, not {getattr(options, name)}")
    if options.workers < 0:
        raise BuildError(f"workers must be 0 or more, not {options.workers}")
