"""The `tokstore` command. Thin: every verb calls the library; errors become one line and exit 1."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tokstore.errors import StoppedBySignal, TokstoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tokenize motion datasets into a chunked token store, and read it back.")


@contextlib.contextmanager
def user_errors():
    """Turn a library or OS error into ONE line `error: <message>` on stderr and exit status 1;
    a stop signal into its one line and 128 + the signal number."""
    from vqvae import VQVAEError

    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 (Linux file names are
        if hasattr(stream, "reconfigure"):   # bytes) prints as backslash escapes, not a traceback
            stream.reconfigure(errors="backslashreplace")
    try:
        yield
    except StoppedBySignal as exc:
        import atexit

        atexit.register(_ignore_stop_signals)  # runs before torch's slow exit hooks (LIFO)
        if not exc.rank:
            _say(str(exc), err=True)
        raise typer.Exit(128 + exc.signum) from None
    except (TokstoreError, VQVAEError) as exc:
        _say(f"error: {_one_line(str(exc))}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        _say(f"error: {os_error_line(exc)}", err=True)
        raise typer.Exit(1) from None


def _say(text: str, err: bool = False) -> None:
    """typer.echo of text that may hold names, captions and paths from untrusted files, with
    what a terminal would act on (escape sequences, ...) written as escapes."""
    from tokstore.render import terminal_safe

    typer.echo(terminal_safe(text), err=err)


# library advice that names an API argument, as the command line spells it
API_TO_FLAGS = {"(not replacing it: TokenStore.create(..., overwrite=True) does)":
                "(not replacing it: remove it, or give another --store)"}


def _ignore_stop_signals() -> None:
    """At exit after a stop signal: one more (a second Ctrl-C) would only add a traceback."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _one_line(message: str) -> str:
    """A message as one line (a preflight report keeps its lines: one problem each)."""
    for api, flags in API_TO_FLAGS.items():
        message = message.replace(api, flags)
    return message if message.count("\n") and message.startswith("preflight") \
        else " ".join(message.split())


def os_error_line(exc: OSError) -> str:
    """`<file>: <what the OS said> (<ERRNO>)`, both files for a rename; the file is left out
    only where the OS error named none."""
    import errno as errno_names

    what = exc.strerror or str(exc) or type(exc).__name__
    code = f" ({errno_names.errorcode[exc.errno]})" if exc.errno in errno_names.errorcode else ""
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    where = " -> ".join(files)
    return f"{where}: {what}{code}" if where else f"{what}{code}"


# ---- build, demo (tokstore/build.py, tokstore/demo.py) ------------------------------------------

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
    allow_mixed_codes: bool = typer.Option(
        False, "--allow-mixed-codes", help="Resume a store whose codes were made exact (CPU fp32) "
        "with inexact ones, or with another inexact device/precision (recorded as 'mixed')."),
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
            on_error=on_error, allow_mixed_codes=allow_mixed_codes))
    _echo_summary(summary)


def _echo_summary(s) -> None:
    """A BuildSummary: what the store holds, what this run did, what was skipped and why."""
    if s.rank:
        return  # under torchrun rank 0 speaks for all
    if s.already_complete:
        _say(f"{s.store} is already complete ({s.samples} samples, {s.codes} codes): "
             "nothing to do")
    else:
        rate = s.frames / s.seconds if s.seconds else 0.0
        resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
        _say(f"built {s.store}: {s.samples} samples, {s.codes} codes; this run encoded "
             f"{s.motions} motions{resumed}, {s.frames} frames in {s.seconds:.1f} s "
             f"({rate:,.0f} frames/s)")
    if s.skipped:  # one write: a build may skip thousands
        _say("\n".join([f"skipped {len(s.skipped)}:", *(
            f"  {skip['name']}: {skip['path']}: {skip['reason']}" for skip in s.skipped)]))


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
        _say(f"demo dataset and random-weight checkpoint in {directory}; running:\n"
             f"  {made.command()}")
        summary = run_build(BuildOptions(made.layout, made.checkpoint, made.config, str(made.store)))
        _echo_summary(summary)
        with TokenStore.open(made.store) as store:
            _say(describe(store))


# ---- inspect: info / show / ls / stats / verify / decode (tokstore/inspect.py, render.py) -------

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DeviceOption = Annotated[str, typer.Option(help="Torch device for the model: cpu, cuda, cuda:1.")]
MeanOption = Annotated[Optional[Path], typer.Option(
    "--mean", help="mean.npy to de-normalize with, instead of the statistics the store recorded.")]
StdOption = Annotated[Optional[Path], typer.Option("--std", help="std.npy; give with --mean.")]


def _print_json(data) -> None:
    import json

    from tokstore.render import json_terminal_safe

    typer.echo(json_terminal_safe(json.dumps(data, indent=2, ensure_ascii=False)))


@app.command()
def info(store: str, json: JsonFlag = False):
    """Counts, codebook, model config and provenance of a store."""
    from tokstore import TokenStore, inspect, render

    with user_errors(), TokenStore.open(store) as opened:
        found = inspect.store_info(opened)
        _print_json(found) if json else _say(render.render_info(found))


@app.command()
def show(store: str, name: str, json: JsonFlag = False):
    """Codes and caption lines of one sample."""
    from tokstore import TokenStore, inspect, render

    with user_errors(), TokenStore.open(store) as opened:
        sample = inspect.show_sample(opened, name)
        _print_json(sample) if json else _say(render.render_show(sample))


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
    from tokstore import TokenStore, inspect, render

    with user_errors(), TokenStore.open(store) as opened:
        rows = inspect.list_samples(opened, min_len, max_len, grep, name_glob)
        _print_json(rows) if json else _say(render.render_ls(rows))


@app.command()
def stats(
    store: str,
    plot: Annotated[Optional[Path], typer.Option(help="Also write a PNG figure of the statistics.")] = None,
    top: Annotated[int, typer.Option(min=0, help="How many of the most used codes to list.")] = 10,
    json: JsonFlag = False,
):
    """Codebook usage (active codes, perplexity, top codes) and the length distribution."""
    from tokstore import TokenStore, inspect, render

    with user_errors(), TokenStore.open(store) as opened:
        found = inspect.code_stats(opened, top)
        if plot is not None:
            inspect.plot_stats(opened, plot)
        _print_json(found) if json else _say(render.render_stats(found))
        if plot is not None and not json:
            _say(f"plot:         {plot}")


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
    from tokstore import TokenStore, inspect, render

    if reencode is not None and checkpoint is None:
        _say("error: --reencode needs --checkpoint", err=True)
        raise typer.Exit(1)
    with user_errors(), TokenStore.open(store) as opened:
        report = inspect.verify_store(opened, checkpoint, reencode or 8, precision,
                                      seed, device, mean, std, min_agreement)
    _say(render.render_verify(report))
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

    from tokstore import TokenStore, inspect, legacy

    with user_errors(), TokenStore.open(store) as opened:
        motion = inspect.decode_sample(opened, name, checkpoint, device, mean, std)
        legacy.replace_atomically(out, lambda f: np.save(f, motion))  # OUT itself, no '.npy' added
    _say(f"wrote {out}: {motion.shape[0]} frames x {motion.shape[1]} features, float32")


# ---- legacy files: export what the original wrote, import its outputs (tokstore/legacy.py) ----

@contextlib.contextmanager
def _stop_signals_say(outcome: str):
    """SIGTERM/SIGINT during an export: ONE line saying what the output holds, exit 128 + N
    (a bare Ctrl-C exited silently, SIGTERM killed outright, a partial export looking whole)."""
    from tokstore.lifetime import Interrupted, StopSignals

    try:
        with StopSignals():
            yield
    except Interrupted as exc:
        raise StoppedBySignal(f"interrupted by {exc}: {outcome}", exc.signum) from None


@app.command("export-npy")
def export_npy(store: str, out_dir: str):
    """Write OUT_DIR/<name>.npy per motion, (1, T') in the legacy dtype, as the original did."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened, _stop_signals_say(
            f"{out_dir} holds a partial export; re-run the same command to complete it"):
        count = legacy.export_npy(opened, out_dir)
    _say(f"wrote {count} code files under {out_dir}")


@app.command("export-prob")
def export_prob(store: str, out_file: str):
    """Write the original's probability file (torch.save float32, codebook_size + 2)."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened, _stop_signals_say(
            f"{out_file} not written; re-run the same command"):
        legacy.export_prob(opened, out_file)
    _say(f"wrote {out_file}")


@app.command("export-pickle")
def export_pickle(store: str, out_file: str,
                  split: str = typer.Option(None, help="split file: these names, in this order")):
    """Write the original's all_data.pkl (text_data, code_data, file_names)."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened, _stop_signals_say(
            f"{out_file} not written; re-run the same command"):
        legacy.export_pickle(opened, out_file, split)
    _say(f"wrote {out_file}")


@app.command("import")
def import_legacy(
        store: str = typer.Option(..., help="the new store to write"),
        codes_dir: str = typer.Option(None, help="the original's code directory (<name>.npy)"),
        texts_dir: str = typer.Option(None, help="caption folder (<name>.txt)"),
        split: str = typer.Option(None, help="split file naming the motions, in order"),
        prob: str = typer.Option(None, help="the original's prob file, checked against the codes"),
        pickle: str = typer.Option(None, help="an all_data.pkl instead of the three above"),
        codebook_size: int = typer.Option(None, help="real codebook size (default: prob length - 2)"),
        backend: str = typer.Option(None, help="zarr | hdf5 (default: hdf5 for .h5/.hdf5 paths)")):
    """Build a store from the original's outputs, without re-encoding."""
    from tokstore import legacy

    with user_errors():
        if pickle is not None:
            if codes_dir or texts_dir or split or prob:
                raise legacy.LegacyFormatError("give either --pickle or --codes-dir/--texts-dir/--split")
            legacy.import_pickle(store, pickle, codebook_size, backend)
        elif codes_dir and texts_dir and split:
            legacy.import_code_dir(store, codes_dir, texts_dir, split, prob, codebook_size, backend)
        else:
            raise legacy.LegacyFormatError("give --pickle FILE, or --codes-dir, --texts-dir and --split")
    _say(f"wrote {store}")


if __name__ == "__main__":
    sys.exit(app())
