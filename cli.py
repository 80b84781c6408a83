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


# ---- build, demo (tokstore/build.py, tokstore/demo.py) ------------------------------------------
from pathlib import Path  # noqa: E402  (kept in this block so that verbs merge independently)

MODEL_FLAGS_HELP = ("Model: --preset motionmillion|t2m-gpt, or the original get-codes flags pasted "
                    "as they are (--nb-code --code-dim --output-emb-width --down-t --stride-t "
                    "--width --depth --dilation-growth-rate --vq-act --vq-norm --kernel-size "
                    "--quantizer --use_patcher --patch_size --patch_method, and --input-dim), or "
                    "a preset with some of those flags replaced.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             help="Encode a motion dataset into a token store: resumable, provenance-checked, "
                  "torchrun-aware. " + MODEL_FLAGS_HELP)
def build(
    ctx: typer.Context,
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Original checkpoint ({'net': ...})."),
    store: str = typer.Option(..., "--store", help="Output store: a directory (zarr) or a .h5 file."),
    preset: str | None = typer.Option(None, "--preset", help="motionmillion | t2m-gpt."),
    root: Path | None = typer.Option(None, "--root", help="Dataset root (MotionMillion layout)."),
    dataname: str | None = typer.Option(None, "--dataname", help="t2m | kit: HumanML3D/KIT layout."),
    motion_type: str = typer.Option("vector_272", "--motion-type"),
    text_type: str = typer.Option("texts", "--text-type"),
    version: str = typer.Option("version1/t2m_60_300", "--version", help="Split folder."),
    split: Path | None = typer.Option(None, "--split", help="Split file (overrides the layout's)."),
    mean: Path | None = typer.Option(None, "--mean", help="mean.npy (overrides the layout's)."),
    std: Path | None = typer.Option(None, "--std", help="std.npy (overrides the layout's)."),
    motion_dir: Path | None = typer.Option(None, "--motion-dir"),
    text_dir: Path | None = typer.Option(None, "--text-dir"),
    backend: str | None = typer.Option(None, "--backend", help="zarr | hdf5 (default: by suffix)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if present) | cpu | cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact) | tf32 | bf16."),
    workers: int = typer.Option(2, "--workers", help="Loader processes (0: load in this one)."),
    batch_frames: int | None = typer.Option(
        None, "--batch-frames", help="Frames per encoder batch (default 8192 on CPU, 131072 on CUDA)."),
    window: int = typer.Option(4096, "--window", help="Split entries batched together."),
    commit_every: int = typer.Option(50000, "--commit-every", help="Motions between commits."),
    on_error: str = typer.Option("fail", "--on-error", help="fail | skip (and record) bad entries."),
):
    from tokstore.build import BuildOptions, build as run_build, model_config
    from tokstore.sources import SourceLayout

    with user_errors():
        layout = SourceLayout.resolve(root, dataname, motion_type, text_type, version, split, mean,
                                      std, motion_dir, text_dir)
        config = model_config(preset, ctx.args, layout.input_dim)
        summary = run_build(BuildOptions(
            layout, checkpoint, config, store, backend=backend, device=device, precision=precision,
            workers=workers, batch_frames=batch_frames, window=window, commit_every=commit_every,
            on_error=on_error))
    _echo_summary(summary)


def _echo_summary(s) -> None:
    """A BuildSummary: what the store holds, what this run did, what was skipped and why."""
    if s.rank:
        return  # under torchrun rank 0 speaks for all
    if s.already_complete:
        typer.echo(f"{s.store} is already complete ({s.samples} samples, {s.tokens} tokens): "
                   "nothing to do")
    else:
        rate = s.frames / s.seconds if s.seconds else 0.0
        resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
        typer.echo(f"built {s.store}: {s.samples} samples, {s.tokens} tokens; this run encoded "
                   f"{s.motions} motions{resumed}, {s.frames} frames in {s.seconds:.1f} s "
                   f"({rate:,.0f} frames/s)")
    if s.skipped:
        typer.echo(f"skipped {len(s.skipped)}:")
        for skip in s.skipped:
            typer.echo(f"  {skip['name']}: {skip['path']}: {skip['reason']}")


@app.command(help="Make a small synthetic dataset and a random-weight model of the production "
                  "shape, build their store, and describe it.")
def demo(directory: Path | None = typer.Option(
        None, "--dir", help="Where to put the files (default: a new temporary directory).")):
    import tempfile

    from tokstore import TokenStore
    from tokstore.build import BuildOptions, build as run_build
    from tokstore.demo import describe, make_demo

    with user_errors():
        directory = directory or Path(tempfile.mkdtemp(prefix="tokstore-demo-"))
        made = make_demo(directory)
        typer.echo(f"demo dataset and random-weight checkpoint in {directory}; running:\n"
                   f"  {made.command()}")
        summary = run_build(BuildOptions(made.layout, made.checkpoint, made.config, str(made.store)))
        _echo_summary(summary)
        with TokenStore.open(made.store) as store:
            typer.echo(describe(store))


if __name__ == "__main__":
    sys.exit(app())
