"""Which samples have a caption worth training on: a line that keeps something after str.strip().

Stores hold the answer per sample in the `captioned` array, computed from the lines as they are
appended (`has_caption`), so `captioned()` reads n bytes. Stores made before it have no such
array: there every caption line is decoded and stripped (seconds on a store of millions; the
same answer).
"""
from __future__ import annotations

import numpy as np

_TEXT_WINDOW = 16 << 20   # caption bytes decoded at a time for stores without the flags


def has_caption(lines) -> bool:
    """What the flag of one sample holds: is any of its lines not blank? (Their concatenation
    keeps something after strip() exactly when one of them does: one C call, not one a line.)"""
    return bool("".join(lines).strip())


def captioned(reader) -> np.ndarray:
    """Per sample: has it a caption line that keeps something after str.strip()?"""
    if reader.has_array("captioned"):
        return reader.whole_array("captioned").astype(bool)
    return captioned_from_text(reader)


def captioned_from_text(reader) -> np.ndarray:
    """The same answer from the caption lines themselves (stores without the flags; check())."""
    line_offsets = reader.whole_array("line_offsets")
    sample_lines = reader.whole_array("sample_lines")
    text = reader.array("text")
    lines = len(line_offsets) - 1
    nonblank = np.zeros(lines, dtype=bool)
    first = 0
    while first < lines:                  # windows of whole lines
        last = int(np.searchsorted(line_offsets, line_offsets[first] + _TEXT_WINDOW, "right")) - 1
        last = min(max(last, first + 1), lines)
        base = int(line_offsets[first])
        window = text.read(base, int(line_offsets[last])).tobytes()
        bounds = (line_offsets[first:last + 1] - base).tolist()
        nonblank[first:last] = [bool(window[a:b].decode("utf-8", errors="replace").strip())
                                for a, b in zip(bounds, bounds[1:])]
        first = last
    running = np.concatenate([[0], np.cumsum(nonblank)])
    return running[sample_lines[1:]] > running[sample_lines[:-1]]
