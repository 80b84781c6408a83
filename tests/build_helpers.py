"""What the build tests share: a tiny dataset and model, running the CLI, reading a store whole."""
from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import preforked
import tree_copies
from preforked import subprocess_env  # noqa: F401 - the tests' import place
import typer.main
import typer.testing
from typer.testing import CliRunner

import cli
from tokstore import TokenStore
from tokstore.store import NotAStoreError
from tokstore.demo import save_random_checkpoint
from tokstore.sources import SourceLayout
from tokstore.synthetic import SyntheticDataset, make_dataset
from vqvae import VQVAEConfig

REPO = Path(__file__).resolve().parent.parent
# the production shape (FSQ 64000, patcher, LN) at a width that encodes in milliseconds
TINY = ["--preset", "motionmillion", "--width", "32", "--code-dim", "32", "--output-emb-width", "32"]


def tiny_config() -> VQVAEConfig:
    return VQVAEConfig.from_flags(VQVAEConfig.preset("motionmillion").to_flags() + TINY[2:])


def tiny_setup(tmp_path, n: int = 24, lengths=(8, 40), seed: int = 0):
    """(dataset, checkpoint path) in tmp_path: tmp_path/"data" and tmp_path/"checkpoint.pth",
    copied from the ones this test process made first for these arguments (a copy costs a
    quarter of writing them: the motions are random, the checkpoint a model's)."""
    key = n, tuple(lengths), seed
    if key not in _TINY_MADE:
        where = Path(tempfile.mkdtemp(prefix="tiny-", dir=TINY_MADE_IN))
        dataset = make_dataset(where / "data", n, seed=seed, lengths=lengths)
        save_random_checkpoint(where / "checkpoint.pth", tiny_config(), seed)
        _TINY_MADE[key] = where, dataset
    where, dataset = _TINY_MADE[key]
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    tree_copies.copy_tree(where / "data", tmp_path / "data")
    tree_copies.copy_file(where / "checkpoint.pth", tmp_path / "checkpoint.pth")
    return moved(dataset, tmp_path / "data"), tmp_path / "checkpoint.pth"


# (n, lengths, seed) -> (folder, dataset) of the tiny_setup trees made in this process, in
# TINY_MADE_IN (the session's, set by conftest.py; outside pytest, None: the system's
# temporary folder, left there)
_TINY_MADE: dict[tuple, tuple[Path, SyntheticDataset]] = {}
TINY_MADE_IN: Path | None = None


def moved(dataset: SyntheticDataset, root) -> SyntheticDataset:
    """The same synthetic dataset (default MotionMillion layout) at `root`: its copy there (with
    lists of its own, that a test may change)."""
    return dataclasses.replace(dataset, root=Path(root), layout=SourceLayout.motionmillion(root),
                               names=list(dataset.names), frames=list(dataset.frames))


def tiny_built(copy_of_made, tmp_path, n: int = 24, first: int | None = None, extra=()):
    """(dataset, checkpoint, store) as tiny_setup(tmp_path, n) and a build (with the `extra`
    flags) of its split's first `first` entries (all of them: None) into tmp_path/"s.zarr"
    leave them, copied from the one such tree this test process builds (the fixture
    copy_of_made). The store's meta names the paths it was first built from; a resumed build
    brings them up to date."""
    def make(where):
        dataset, checkpoint = tiny_setup(where, n=n)
        store = where / "s.zarr"
        if first is None:
            assert run_cli(*build_args(dataset, checkpoint, store, *extra)).exit_code == 0
        else:
            build_first_entries(dataset, checkpoint, store, first, *extra)
        return dataset

    dataset = copy_of_made(f"tiny{n}-first{first}{''.join(extra)}", make)
    return moved(dataset, tmp_path / "data"), tmp_path / "checkpoint.pth", tmp_path / "s.zarr"


def committed(store) -> int:
    """Samples committed in the store so far (0 before it exists)."""
    try:
        with TokenStore.open(store) as s:
            return len(s)
    except NotAStoreError:  # not created yet
        return 0


def build_first_entries(dataset, checkpoint, store, count: int = 10, *extra) -> None:
    """Build `store` (with the `extra` flags) from the split's first `count` entries, then put
    the whole split back."""
    split = dataset.layout.split_file
    full = split.read_text()
    split.write_text("".join(f"{n}\n" for n in dataset.names[:count]))
    try:
        assert run_cli(*build_args(dataset, checkpoint, store, *extra)).exit_code == 0
    finally:
        split.write_text(full)


def build_args(dataset, checkpoint, store, *extra) -> list[str]:
    return ["build", "--root", str(dataset.root), "--checkpoint", str(checkpoint),
            "--store", str(store), *TINY, "--workers", "0", *extra]


@functools.cache
def _click_command(app):
    return typer.main.get_command(app)


class OnceBuiltCliRunner(CliRunner):
    """typer's CliRunner, building an app's click command once per process instead of on every
    invoke (~20 ms of signature parsing each time); click makes a fresh context per run."""

    def invoke(self, app, *args, **kwargs):
        with mock.patch.object(typer.testing, "_get_command", _click_command):
            return super().invoke(app, *args, **kwargs)


def run_cli(*args):
    """The CLI in this process; result.output holds stdout and stderr."""
    return OnceBuiltCliRunner().invoke(cli.app, [str(a) for a in args])


CLI = [sys.executable, "-m", "cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# what torchrun gives its ranks where the environment leaves it unset
TORCHRUN_SETS = {"OMP_NUM_THREADS": "1"}


def torchrun_command(args, tmp) -> tuple[list[str], dict, int]:
    """The CLI under torchrun with two CPU ranks, each rank a child of the preforked server that
    a relay process stands in for (one process more per rank; a fresh `python -m cli` where no
    server starts): (command, environment, processes per rank). `tmp`: torchrun's TMPDIR (it
    leaves a torchelastic_* folder there)."""
    env = {**subprocess_env(), "TMPDIR": str(tmp)}
    relay = preforked.relayed(["-m", "cli"], env, TORCHRUN_SETS)
    if relay is None:
        return TORCHRUN + ["-m", "cli"] + [str(a) for a in args], env, 1
    program, env = relay
    return TORCHRUN + ["--no-python"] + program + [str(a) for a in args], env, 2


def run_torchrun(args):
    """The CLI under torchrun with two CPU ranks: the finished process (stdout, stderr as text)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tokstore-torchrun-") as tmp:
        command, env, _ = torchrun_command(args, tmp)
        return preforked.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)


def contents(path) -> dict:
    """Everything a store holds, read back through the public API."""
    with TokenStore.open(path) as store:
        return {
            "names": store.names,
            "codes": [store.codes(i).copy() for i in range(len(store))],
            "dtype": store.code_dtype,
            "lengths": store.lengths.copy(),
            "texts": [store.texts(i) for i in range(len(store))],
            "counts": store.counts.copy(),
            "skipped": store.meta.get("skipped"),
            "check": store.check(),
        }


def assert_same_store(a, b) -> None:
    a, b = contents(a), contents(b)
    assert a["check"] == [] and b["check"] == []
    assert a["names"] == b["names"]
    assert a["dtype"] == b["dtype"]
    assert np.array_equal(a["lengths"], b["lengths"])
    assert all(np.array_equal(x, y) for x, y in zip(a["codes"], b["codes"]))
    assert a["texts"] == b["texts"]
    assert np.array_equal(a["counts"], b["counts"])
    assert a["skipped"] == b["skipped"]
