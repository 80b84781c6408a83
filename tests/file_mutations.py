"""Damaged copies of a file's bytes, and what a reader makes of them, for tests that feed readers of untrusted files what a bad
disk, a cut-off download or a hostile hand could give them."""
from __future__ import annotations

import random
from typing import Iterator


def damaged_copies(data: bytes, count: int, seed: int = 0) -> Iterator[bytes]:
    """`count` versions of `data`, the same ones for the same seed, each with one to three
    damages: bytes overwritten (often with 0x00, 0x01, 0x7f or 0xff), the end cut off, random
    bytes inserted, bytes deleted."""
    rng = random.Random(seed)
    for _ in range(count):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if len(damaged) < 3:
                break
            kind = rng.random()
            at = rng.randrange(len(damaged))
            if kind < 0.5:
                damaged[at] = rng.choice([0x00, 0x01, 0x7f, 0xff, rng.randrange(256)])
            elif kind < 0.7:
                del damaged[max(at, 1):]
            elif kind < 0.85:
                damaged[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                del damaged[at:at + rng.randint(1, 8)]
        yield bytes(damaged)


def outcomes_of(read, path, copies, refusal: type[Exception]) -> set[str]:
    """Write each damaged copy to `path` and call `read(path)`: "read", or "refused" for a
    `refusal` naming the file; any other exception propagates and fails the calling test."""
    seen = set()
    for data in copies:
        path.write_bytes(data)
        try:
            read(path)
            seen.add("read")
        except refusal as exc:
            assert str(path) in str(exc), exc
            seen.add("refused")
    return seen
