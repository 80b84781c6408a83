"""`tokstore demo`: a small synthetic dataset and a random-weight model of the production shape,
made so that the build can be tried without downloading anything."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from vqvae import VQVAE, VQVAEConfig

from .inspect import store_info
from .render import render_info
from .sources import SourceLayout
from .store import TokenStore
from .synthetic import make_dataset

# the production model (preset motionmillion: FSQ, 64000 codes, patcher, LN) at a width that
# encodes a few dozen motions in about a second on a laptop CPU
DEMO_WIDTH = 64
DEMO_MOTIONS = 48


@dataclass
class Demo:
    root: Path  # the dataset, in the MotionMillion layout
    checkpoint: Path
    config: VQVAEConfig
    store: Path

    @property
    def layout(self) -> SourceLayout:
        return SourceLayout.motionmillion(self.root)

    def command(self) -> str:
        """The `tokstore build` command line the demo runs."""
        args = ["tokstore", "build", "--root", str(self.root), "--checkpoint", str(self.checkpoint),
                "--store", str(self.store), *self.config.to_flags()]
        return shlex.join(args)


def make_demo(directory, motions: int = DEMO_MOTIONS, width: int = DEMO_WIDTH, seed: int = 0) -> Demo:
    """Write the dataset and the checkpoint under `directory` (kept if already there)."""
    directory = Path(directory)
    config = VQVAEConfig.preset("motionmillion", width=width, code_dim=width, output_emb_width=width)
    demo = Demo(directory / "dataset", directory / "checkpoint.pth", config, directory / "store.zarr")
    if not demo.layout.split_file.exists():
        make_dataset(demo.root, motions, seed=seed)
    if not demo.checkpoint.exists():
        save_random_checkpoint(demo.checkpoint, config, seed)
    return demo


def save_random_checkpoint(path, config: VQVAEConfig, seed: int = 0) -> None:
    """A randomly initialized model saved as the original's training saves one: {'net': state dict
    with DDP's 'module.' prefixes, 'nb_iter': ...}."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQVAE(config)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"net": state, "nb_iter": 0}, path)


def describe(store: TokenStore, example: int = 0) -> str:
    """What `tokstore info` prints, then one sample's codes and captions."""
    sample = store[example]
    codes = " ".join(map(str, sample.codes[:16].tolist())) + (" ..." if len(sample.codes) > 16 else "")
    lines = [render_info(store_info(store)),
             f"example:      {sample.name!r}: {len(sample.codes)} codes: {codes}"]
    lines += [f"  caption     {line.rstrip()}" for line in sample.texts if line.strip()]
    return "\n".join(lines)
