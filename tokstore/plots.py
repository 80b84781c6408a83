"""The `tokstore stats --plot` figure. matplotlib is an optional extra, imported only here."""
from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import numpy as np

from tokstore.errors import TokstoreError
from tokstore.store import oscalls

MARKERS = 2000  # up to this many points per line get a marker each
POINTS = 2000   # a longer series is drawn through this many points (a panel is ~450 px wide)
FIGSIZE = (16, 4.5)  # inches, at 100 dpi


def plot_stats(out_png, code_counts: np.ndarray, lengths: np.ndarray,
               per_dimension: list[np.ndarray] | None) -> None:
    """Three panels: code frequency by rank (log-log), the length histogram, and code usage per
    FSQ dimension (`per_dimension`: counts of each digit value) or, when None, per codebook row."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no display
    except ImportError:
        raise TokstoreError("--plot needs matplotlib: pip install 'tokstore[plot]'") from None

    existed = os.path.exists(out_png)  # through a link: its target is the file written
    # A path that cannot be written fails now, not after the drawing; a file already there is
    # replaced only once the new figure is written beside it, so that a failed drawing or a full
    # disk leaves it whole.
    fd = os.open(out_png, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        try:
            figure = io.BytesIO()
            _draw(Figure(figsize=FIGSIZE), code_counts, lengths,
                  per_dimension).savefig(figure, format="png", dpi=100)
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):  # a FIFO or a device: written as it is
                with open(fd, "wb", closefd=False) as out:
                    out.write(figure.getbuffer())
                return
        finally:
            os.close(fd)  # before the rename: Windows renames nothing over an open file
        _replace(os.path.realpath(out_png), figure.getbuffer(), stat.S_IMODE(status.st_mode),
                 str(out_png))
    except BaseException:
        if not existed:  # no figure left where there was nothing
            with contextlib.suppress(OSError):
                os.unlink(os.path.realpath(out_png))
        raise


def _replace(target: str, data, mode: int, named: str) -> None:
    """`data` over the regular file `target` through a temporary file beside it (its mode
    kept); where the folder refuses a new file or the rename (not writable, sticky), in place."""
    try:
        try:
            oscalls.replace_file(Path(target), data, durable=False)
        except PermissionError:
            with open(target, "r+b") as out:
                out.truncate(0)
                out.write(data)
            return
    except OSError as exc:  # os.write's error names no file
        raise OSError(exc.errno, exc.strerror, named) from None
    with contextlib.suppress(OSError):  # a file system without modes (vfat) keeps its own
        os.chmod(target, mode)


def _draw(fig, code_counts, lengths, per_dimension):
    """The three panels drawn on `fig`; returns it. Margins are fixed: a "tight" layout draws
    the figure twice (once to measure its labels), ~40% of the time of a small figure."""
    rank_ax, length_ax, part_ax = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.065, right=0.99, bottom=0.12, top=0.92, wspace=0.27)
    used = np.sort(code_counts[code_counts > 0])[::-1]
    if len(used):  # markers only where they stay legible (and cheap): 64,000 of them take seconds
        rank, count = log_spaced(used)
        rank_ax.loglog(rank, count, marker="." if len(used) <= MARKERS else "", linestyle="-")
    rank_ax.set(title=f"code frequency by rank ({len(used)} active)", xlabel="rank", ylabel="count")

    length_ax.hist(lengths, bins=min(50, max(1, len(np.unique(lengths)))))
    length_ax.set(title="sample length", xlabel="codes per sample", ylabel="samples")

    if per_dimension is not None:
        for dim, counts in enumerate(per_dimension):
            part_ax.plot(np.arange(len(counts)), counts, marker="o", label=f"dim {dim} (L={len(counts)})")
        part_ax.legend(fontsize="small")
        part_ax.set(title="code usage per FSQ dimension", xlabel="level (digit value)", ylabel="count")
    else:
        # one line, not one bar per row: 64,000 bar patches take a minute to draw (and a filled
        # patch seconds: matplotlib walks its path to find the limits)
        if len(code_counts) <= POINTS:
            part_ax.step(np.arange(len(code_counts)), code_counts, where="mid", linewidth=0.6)
        else:
            part_ax.plot(*envelope(code_counts), linewidth=0.6)
        part_ax.set(title="code usage per codebook row", xlabel="codebook row", ylabel="count")
    return fig


def log_spaced(descending: np.ndarray, points: int = POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(rank, value) at up to `points` ranks spaced evenly on a log axis, the first and last
    included: a falling series seen on log-log axes loses nothing a pixel would show."""
    if len(descending) <= points:
        return np.arange(1, len(descending) + 1), descending
    ranks = np.unique(np.geomspace(1, len(descending), points).round().astype(np.int64))
    return ranks, descending[ranks - 1]


def envelope(values: np.ndarray, points: int = POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a line through each bin's smallest and largest value, for bins of consecutive
    entries (at most points / 2 of them): what a pixel column of the whole series shows."""
    width = -(-len(values) // (points // 2))
    padded = np.pad(values, (0, -len(values) % width), mode="edge").reshape(-1, width)
    starts = np.arange(len(padded)) * width
    return (np.repeat(starts + (width - 1) / 2, 2),
            np.stack([padded.min(axis=1), padded.max(axis=1)], axis=1).ravel())
