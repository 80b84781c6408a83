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


# ---- legacy files: export what the original wrote, import its outputs (tokstore/legacy.py) ----

@app.command("export-npy")
def export_npy(store: str, out_dir: str):
    """Write OUT_DIR/<name>.npy per motion, (1, T') in the legacy dtype, as the original did."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened:
        count = legacy.export_npy(opened, out_dir)
    typer.echo(f"wrote {count} code files under {out_dir}")


@app.command("export-prob")
def export_prob(store: str, out_file: str):
    """Write the original's probability file (torch.save float32, codebook_size + 2)."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened:
        legacy.export_prob(opened, out_file)
    typer.echo(f"wrote {out_file}")


@app.command("export-pickle")
def export_pickle(store: str, out_file: str,
                  split: str = typer.Option(None, help="split file: these names, in this order")):
    """Write the original's all_data.pkl (text_data, code_data, file_names)."""
    from tokstore import TokenStore, legacy

    with user_errors(), TokenStore.open(store) as opened:
        legacy.export_pickle(opened, out_file, split)
    typer.echo(f"wrote {out_file}")


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
    typer.echo(f"wrote {store}")


if __name__ == "__main__":
    sys.exit(app())
