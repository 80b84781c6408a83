"""Reading many samples at once, for a DataLoader's batch: each offset array is gathered with one
numpy call, codes are joined into one flat array, and names and caption lines are decoded only
when asked for (each a buffer decoded once, then sliced), not sample by sample.
"""
from __future__ import annotations

import numpy as np

from .errors import StoreCorruptError


def _spans(bounds: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the given samples in a flat array described by offsets `bounds`."""
    return bounds[indices], bounds[indices + 1]


def _joined(array, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """array[starts[k]:stops[k]] for every k, end to end, as one array."""
    parts = [array.read(a, b) for a, b in zip(starts.tolist(), stops.tolist())]
    return np.concatenate(parts) if parts else np.zeros(0, array.dtype)


def _decoded(raw: np.ndarray, starts: np.ndarray, stops: np.ndarray, what: str) -> list[str]:
    """The strings raw[starts[k]:stops[k]]: one decode of the whole buffer when it is ASCII."""
    data = raw.tobytes()
    bounds = zip(starts.tolist(), stops.tolist())
    try:
        if data.isascii():
            whole = data.decode("ascii")
            return [whole[a:b] for a, b in bounds]
        return [data[a:b].decode("utf-8") for a, b in bounds]
    except UnicodeDecodeError as exc:
        raise StoreCorruptError(f"{what}: not valid UTF-8: {exc}") from None


class SampleBatch:
    """Samples `indices` of one commit (validated by the caller). Each part is read on first use:
    `codes` (flat, `lengths` per sample), `names()`, `texts()` (caption lines verbatim),
    `line_counts`."""

    def __init__(self, reader, indices: np.ndarray):
        self._reader, self.indices = reader, indices
        self._codes = None

    @property
    def lengths(self) -> np.ndarray:
        starts, stops = _spans(self._reader.offsets, self.indices)
        return stops - starts

    @property
    def codes(self) -> np.ndarray:
        """All the samples' codes end to end (split them with `lengths`)."""
        if self._codes is None:
            starts, stops = _spans(self._reader.offsets, self.indices)
            self._codes = _joined(self._reader.array("codes"), starts, stops)
        return self._codes

    def names(self) -> list[str]:
        starts, stops = _spans(self._reader.whole_array("name_offsets"), self.indices)
        raw = _joined(self._reader.array("names"), starts, stops)
        ends = np.cumsum(stops - starts)
        return _decoded(raw, ends - (stops - starts), ends, "names")

    @property
    def line_counts(self) -> np.ndarray:
        """Caption lines per sample (blank lines included)."""
        first, last = _spans(self._reader.whole_array("sample_lines"), self.indices)
        return last - first

    def texts(self) -> list[list[str]]:
        """Each sample's caption lines verbatim ('\\n' and blank lines kept)."""
        first, last = _spans(self._reader.whole_array("sample_lines"), self.indices)
        line_offsets = self._reader.whole_array("line_offsets")
        counts = last - first
        byte_starts, byte_stops = line_offsets[first], line_offsets[last]
        raw = _joined(self._reader.array("text"), byte_starts, byte_stops)
        # every line's place in `raw`: its offset in the store, less where its sample's bytes
        # begin there, plus where they begin in `raw`
        sizes = byte_stops - byte_starts
        shift = np.repeat(np.cumsum(sizes) - sizes - byte_starts, counts)
        total = int(counts.sum())
        lines = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(total)
        flat = _decoded(raw, line_offsets[lines] + shift, line_offsets[lines + 1] + shift, "text")
        ends = np.cumsum(counts).tolist()
        return [flat[b - c:b] for b, c in zip(ends, counts.tolist())]
