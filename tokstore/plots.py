"""The `tokstore stats --plot` figure. matplotlib is an optional extra, imported only here."""
from __future__ import annotations

import contextlib
import io
import os
import stat

import numpy as np

from tokstore.errors import TokstoreError

MARKERS = 2000  # up to this many points per line get a marker each


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
    # cut only once the figure is drawn (no O_TRUNC), so that a failed drawing leaves it whole.
    fd = os.open(out_png, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        with open(fd, "wb") as out:
            figure = io.BytesIO()
            _draw(Figure(figsize=(16, 4.5), layout="tight"), code_counts, lengths,
                  per_dimension).savefig(figure, format="png", dpi=100)
            if stat.S_ISREG(os.fstat(fd).st_mode):  # not a FIFO or a device: no truncating
                out.truncate(0)
            out.write(figure.getbuffer())
    except BaseException:
        if not existed:  # no half-written figure left where there was nothing
            with contextlib.suppress(OSError):
                os.unlink(os.path.realpath(out_png))
        raise


def _draw(fig, code_counts, lengths, per_dimension):
    """The three panels drawn on `fig`; returns it."""
    rank_ax, length_ax, part_ax = fig.subplots(1, 3)
    used = np.sort(code_counts[code_counts > 0])[::-1]
    if len(used):  # markers only where they stay legible (and cheap): 64,000 of them take seconds
        rank_ax.loglog(np.arange(1, len(used) + 1), used, marker="." if len(used) <= MARKERS else "",
                       linestyle="-")
    rank_ax.set(title=f"code frequency by rank ({len(used)} active)", xlabel="rank", ylabel="count")

    length_ax.hist(lengths, bins=min(50, max(1, len(np.unique(lengths)))))
    length_ax.set(title="sample length", xlabel="codes per sample", ylabel="samples")

    if per_dimension is not None:
        for dim, counts in enumerate(per_dimension):
            part_ax.plot(np.arange(len(counts)), counts, marker="o", label=f"dim {dim} (L={len(counts)})")
        part_ax.legend(fontsize="small")
        part_ax.set(title="code usage per FSQ dimension", xlabel="level (digit value)", ylabel="count")
    else:
        # one step line, not one bar per row: 64,000 bar patches take a minute to draw (and a
        # filled patch seconds: matplotlib walks its path to find the limits)
        part_ax.step(np.arange(len(code_counts)), code_counts, where="mid", linewidth=0.6)
        part_ax.set(title="code usage per codebook row", xlabel="codebook row", ylabel="count")
    return fig
