"""Which samples have a caption worth training on, answered over the flat caption bytes at once
(a Python call per sample costs seconds on a store of millions)."""
from __future__ import annotations

import numpy as np

# What a line's byte says about the line, read from its start: SPACE, ASCII whitespace that
# str.strip() removes (look at the next byte); INK, the start of a character strip() keeps; CHECK,
# a byte that may begin a Unicode space (U+0085, U+00A0, U+1680, U+2000.., U+3000) or is not
# valid UTF-8 here: decode the line and strip it.
_SPACE, _INK, _CHECK = 0, 1, 2
_BYTE_KIND = np.full(256, _INK, dtype=np.int8)
_BYTE_KIND[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = _SPACE
_BYTE_KIND[0x80:0xC0] = _CHECK
_BYTE_KIND[[0xC2, 0xE1, 0xE2, 0xE3]] = _CHECK
_TEXT_WINDOW = 16 << 20   # caption bytes looked at at a time


def _inked_lines(window: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each line window[starts[j]:ends[j]] keeps something after str.strip().

    Looks at each line's first byte, then at the next byte of the lines that began with
    whitespace, and so on: a few vectorised steps instead of a Python call per line.
    """
    if not window.size:                            # only empty lines: all blank
        return np.zeros(len(starts), dtype=bool)
    kind = _BYTE_KIND[np.take(window, starts, mode="clip")]
    inked = (kind == _INK) & (ends > starts)       # an empty line is blank
    pending, step = np.flatnonzero(~inked & (ends > starts)), 0
    while pending.size:
        position = starts[pending] + step
        inside = position < ends[pending]          # a line used up is blank
        pending, position = pending[inside], position[inside]
        kind = _BYTE_KIND[window[position]]
        inked[pending[kind == _INK]] = True
        for j in pending[kind == _CHECK]:
            line = window[starts[j]:ends[j]].tobytes().decode("utf-8", errors="replace")
            inked[j] = bool(line.strip())
        pending, step = pending[kind == _SPACE], step + 1
    return inked


def captioned(reader) -> np.ndarray:
    """Per sample: has it a caption line that keeps something after str.strip()?"""
    line_offsets, sample_lines = reader.loaded("line_offsets"), reader.loaded("sample_lines")
    text = reader.array("text")
    lines = len(line_offsets) - 1
    inked = np.zeros(lines, dtype=bool)
    first = 0
    while first < lines:                  # windows of whole lines
        last = int(np.searchsorted(line_offsets, line_offsets[first] + _TEXT_WINDOW, "right")) - 1
        last = min(max(last, first + 1), lines)
        base = int(line_offsets[first])
        window = text.read(base, int(line_offsets[last]))
        inked[first:last] = _inked_lines(window, line_offsets[first:last] - base,
                                         line_offsets[first + 1:last + 1] - base)
        first = last
    running = np.concatenate([[0], np.cumsum(inked)])
    return running[sample_lines[1:]] > running[sample_lines[:-1]]
