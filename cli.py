"""The `tokstore` command. Thin: every verb calls the library; errors become one line and exit 1."""
from __future__ import annotations

import contextlib
import sys

import typer

from tokstore.errors import TokstoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tokenize motion datasets into a chunked token store, and read it back.")


@contextlib.contextmanager
def user_errors():
    """Turn a library error into `error: <message>` on stderr and exit status 1."""
    from vqvae import VQVAEError

    try:
        yield
    except (TokstoreError, VQVAEError, FileNotFoundError, PermissionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


# ---- inspect: info / show / ls / stats / verify / decode (tokstore/inspect.py) -----------------
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DeviceOption = Annotated[str, typer.Option(help="Torch device for the model: cpu, cuda, cuda:1.")]
MeanOption = Annotated[Optional[Path], typer.Option(
    "--mean", help="mean.npy to de-normalize with, instead of the statistics the store recorded.")]
StdOption = Annotated[Optional[Path], typer.Option("--std", help="std.npy; give with --mean.")]


def _print_json(data) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command()
def info(store: str, json: JsonFlag = False):
    """Counts, codebook, model config and provenance of a store."""
    from tokstore import TokenStore, inspect

    with user_errors(), TokenStore.open(store) as opened:
        found = inspect.store_info(opened)
        _print_json(found) if json else typer.echo(inspect.render_info(found))


@app.command()
def show(store: str, name: str, json: JsonFlag = False):
    """Codes and caption lines of one sample."""
    from tokstore import TokenStore, inspect

    with user_errors(), TokenStore.open(store) as opened:
        sample = inspect.show_sample(opened, name)
        _print_json(sample) if json else typer.echo(inspect.render_show(sample))


@app.command("ls")
def list_store(
    store: str,
    min_len: Annotated[Optional[int], typer.Option(help="Only samples with at least N codes.")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Only samples with at most N codes.")] = None,
    grep: Annotated[Optional[str], typer.Option(help="Only samples with a caption line containing TEXT.")] = None,
    name_glob: Annotated[Optional[str], typer.Option(help="Only names matching a shell pattern.")] = None,
    json: JsonFlag = False,
):
    """Names, code counts and first caption lines (tab-separated), filtered."""
    from tokstore import TokenStore, inspect

    with user_errors(), TokenStore.open(store) as opened:
        rows = inspect.list_samples(opened, min_len, max_len, grep, name_glob)
        _print_json(rows) if json else typer.echo(inspect.render_ls(rows))


@app.command()
def stats(
    store: str,
    plot: Annotated[Optional[Path], typer.Option(help="Also write a PNG figure of the statistics.")] = None,
    top: Annotated[int, typer.Option(min=0, help="How many of the most used codes to list.")] = 10,
    json: JsonFlag = False,
):
    """Codebook usage (active codes, perplexity, top codes) and the length distribution."""
    from tokstore import TokenStore, inspect

    with user_errors(), TokenStore.open(store) as opened:
        found = inspect.code_stats(opened, top)
        if plot is not None:
            inspect.plot_stats(opened, plot)
        _print_json(found) if json else typer.echo(inspect.render_stats(found))
        if plot is not None and not json:
            typer.echo(f"plot:         {plot}")


@app.command()
def verify(
    store: str,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Also re-encode samples with this checkpoint.")] = None,
    reencode: Annotated[Optional[int], typer.Option(min=1, help="How many random samples to re-encode (default 8).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 | tf32 | bf16 (default: the build's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random choice of samples.")] = 0,
    min_agreement: Annotated[float, typer.Option(help="Lowest token agreement that passes.")] = 1.0,
    device: DeviceOption = "cpu",
    mean: MeanOption = None,
    std: StdOption = None,
):
    """Structure, per-array checksums and counts; with --checkpoint, re-encoding agreement.
    Exits 1 on any failure, naming it."""
    from tokstore import TokenStore, inspect

    if reencode is not None and checkpoint is None:
        typer.echo("error: --reencode needs --checkpoint", err=True)
        raise typer.Exit(1)
    with user_errors(), TokenStore.open(store) as opened:
        report = inspect.verify_store(opened, checkpoint, reencode or 8, precision,
                                      seed, device, mean, std, min_agreement)
    typer.echo(inspect.render_verify(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def decode(
    store: str,
    name: str,
    out: Path,
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint the store was built with.")],
    device: DeviceOption = "cpu",
    mean: MeanOption = None,
    std: StdOption = None,
):
    """Decode one sample's codes to motion, de-normalized: OUT.npy holds (T, D) float32."""
    import numpy as np

    from tokstore import TokenStore, inspect

    with user_errors(), TokenStore.open(store) as opened:
        motion = inspect.decode_sample(opened, name, checkpoint, device, mean, std)
        np.save(out, motion)
    typer.echo(f"wrote {out}: {motion.shape[0]} frames x {motion.shape[1]} features, float32")


if __name__ == "__main__":
    sys.exit(app())
