"""store.check(): read every committed byte and list what is wrong (empty when healthy)."""
from __future__ import annotations

import codecs

import numpy as np

from .captions import captioned_from_text
from .errors import StoreCorruptError
from .format import crc32, name_hashes
from .reader import StoreReader

# offsets array -> (array it indexes, where its last entry must land)
SPANS = {"offsets": "codes", "name_offsets": "names", "line_offsets": "text"}


def check_store(reader: StoreReader) -> list[str]:
    problems = _checksums(reader)
    for name, step in (("structure", _structure), ("codes", _code_range), ("names", _names),
                       ("text", _text), ("captioned", _captioned), ("counts", _counts)):
        try:
            problems += step(reader)
        except (StoreCorruptError, ValueError, IndexError, UnicodeDecodeError) as exc:
            problems.append(f"{name}: cannot be checked: {exc}")
    return problems


def _checksums(reader: StoreReader) -> list[str]:
    problems = []
    for name in reader.record.arrays:
        want = reader.record.checksums[name]
        try:
            got = 0
            for _, block in reader.array(name).blocks():
                got = crc32(block, got)
        except StoreCorruptError as exc:
            problems.append(str(exc))
            continue
        if got != want:
            problems.append(_mismatch(name, want, got))
    return problems


def _mismatch(name: str, want: int, got: int) -> str:
    return f"{name}: checksum mismatch (commit record {want:08x}, data {got:08x})"


def _structure(reader: StoreReader) -> list[str]:
    lengths, problems = reader.record.array_lengths, []
    spans = {**{o: lengths[data] for o, data in SPANS.items()},
             "sample_lines": lengths["line_offsets"] - 1}
    for name, end in spans.items():
        values = reader.whole_array(name)
        if values[0] != 0 or values[-1] != end or np.any(np.diff(values) < 0):
            problems.append(f"{name}: not an increasing run of offsets from 0 to {end}")
    return problems


def _code_range(reader: StoreReader) -> list[str]:
    size = reader.record.codebook_size
    for start, block in reader.array("codes").blocks():
        if block.size and (block.min() < 0 or block.max() >= size):
            return [f"codes: values outside the codebook [0, {size}) near code {start}"]
    return []


def _names(reader: StoreReader) -> list[str]:
    names, problems = reader.names, []
    if len(set(names)) != len(names):
        problems.append("names: some sample names occur more than once")
    if not np.array_equal(name_hashes([n.encode("utf-8") for n in names]), reader.name_hashes()):
        problems.append("name_hashes: do not match the names")
    return problems


def _text(reader: StoreReader) -> list[str]:
    """UTF-8 throughout, and every line starts on a character boundary."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    bounds = reader.whole_array("line_offsets")
    starts = bounds[:-1][np.diff(bounds) > 0]  # first byte of every non-empty line
    problems = []
    for start, block in reader.array("text").blocks():
        decoder.decode(block.tobytes())  # raises on invalid bytes
        first, last = np.searchsorted(starts, [start, start + len(block)])
        if np.any((block[starts[first:last] - start] & 0xC0) == 0x80):
            problems = ["line_offsets: a caption line starts inside a UTF-8 character"]
    decoder.decode(b"", final=True)
    return problems


def _captioned(reader: StoreReader) -> list[str]:
    """The stored flags (stores that have them) say what the caption lines say."""
    if not reader.has_array("captioned"):
        return []
    flags = reader.whole_array("captioned")
    if flags.size and flags.max() > 1:
        return ["captioned: values other than 0 and 1"]
    if not np.array_equal(flags.astype(bool), captioned_from_text(reader)):
        return ["captioned: the flags do not match the caption lines"]
    return []


def _counts(reader: StoreReader) -> list[str]:
    """The stored slot itself, not the reader's view (which recomputes a damaged slot)."""
    stored, problems = reader.stored_counts(), []
    want, got = reader.record.checksums["counts"], crc32(stored)
    if got != want:
        problems.append(_mismatch("counts", want, got))
    if not np.array_equal(stored, reader.compute_counts()):
        problems.append("counts: the stored array does not match the committed codes")
    return problems
