"""Deterministic samples for the store tests (also imported by the writer child process)."""
from __future__ import annotations

import functools

import numpy as np

CODEBOOK = 1000
CAPTIONS = ["a person walks forward.\n", "\n", "ünïcødé — 人が歩く 🚶\n",
            "jumps#jump/VERB#0.0#0.0\n", "last line without newline"]


def sample(i: int):
    """Names with '/', spaces and non-ASCII; 0..60 codes (read-only: made once per process);
    0..4 verbatim caption lines."""
    name, codes, texts = _made(i)
    return name, codes, list(texts)


@functools.lru_cache(maxsize=None)
def _made(i: int):
    rng = np.random.default_rng(i)
    name = f"set{i % 3}/sub dir {i % 5}/clip_{i:05d}" + ("_ü" if i % 7 == 0 else "")
    codes = rng.integers(0, CODEBOOK, int(rng.integers(0, 61)), dtype=np.int64)
    codes.flags.writeable = False
    texts = tuple(CAPTIONS[j] for j in rng.permutation(len(CAPTIONS))[:i % 5])
    return name, codes, texts


def batch(start: int, stop: int):
    samples = [sample(i) for i in range(start, stop)]
    return [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples]
