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


if __name__ == "__main__":
    sys.exit(app())
