"""captioned(): the per-sample flag written at append time answers as the caption lines do, and a
store made before the flag existed (no `captioned` array) gives the same answer from its text."""
from __future__ import annotations

import numpy as np
import pytest

from tokstore import TokenStore
from tokstore.store import captions
from tokstore.store import format as store_format

CODEBOOK = 100
# blank to str.strip(): ASCII whitespace, the separators \x1c-\x1f, Unicode spaces (NEL, NBSP,
# ogham, en quad, line/paragraph separators, ideographic space); not blank: anything else
BLANK = ["", "\n", "   \n", "\t\r\n", "\x0b\x0c\n", "\x1c\x1d\x1e\x1f", "\u0085\n", "\u00a0\n",
         "\u1680", "\u2000\u200a\n", "\u2028\u2029", "\u3000\n", " \u00a0 \u3000 \t"]
INKED = ["a\n", "  walks\n", "\u00a0x", "\u3000人\n", "\u200b\n", "é", "\u00adsoft hyphen"]


def samples():
    """Samples with no lines, only blank lines, and blank lines around one that is not."""
    rng = np.random.default_rng(0)
    names, codes, texts = [], [], []
    for i in range(120):
        lines = [BLANK[j] for j in rng.integers(0, len(BLANK), i % 4)]
        if i % 3 == 0:
            lines.insert(int(rng.integers(0, len(lines) + 1)), INKED[i % len(INKED)])
        names.append(f"clip_{i:03d}")
        codes.append(rng.integers(0, CODEBOOK, 5))
        texts.append(lines)
    return names, codes, texts


def build(path, backend):
    names, codes, texts = samples()
    with TokenStore.create(path, CODEBOOK, backend=backend) as store:
        store.append(names[:50], codes[:50], texts[:50])
        store.commit()
        store.append(names[50:], codes[50:], texts[50:])
    return path


def old_format(monkeypatch, path, backend):
    """A store as tokstore wrote them before the flags: no `captioned` array, none in the record."""
    with monkeypatch.context() as patch:
        patch.setattr(store_format, "OPTIONAL_ARRAYS", ())
        return build(path, backend)


def expected():
    return np.array([any(line.strip() for line in lines) for lines in samples()[2]])


def suffix(backend):
    return ".h5" if backend == "hdf5" else ".zarr"


@pytest.mark.parametrize("window", [None, 5])  # 5: the text decoded a few bytes at a time
@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_flags_and_old_format_fallback_agree(tmp_path, monkeypatch, backend, window):
    new = build(tmp_path / f"new{suffix(backend)}", backend)
    old = old_format(monkeypatch, tmp_path / f"old{suffix(backend)}", backend)
    if window:
        monkeypatch.setattr(captions, "_TEXT_WINDOW", window)
    want = expected()
    assert 0 < want.sum() < len(want)
    with TokenStore.open(new) as store_new, TokenStore.open(old) as store_old:
        assert "captioned" in store_new._record.array_lengths
        assert "captioned" not in store_old._record.array_lengths
        assert np.array_equal(store_new._reader.whole_array("captioned"), want.astype(np.uint8))
        assert np.array_equal(store_new.captioned(), want)
        assert np.array_equal(store_old.captioned(), want)
        assert store_new.check() == [] and store_old.check() == []


def test_appending_to_an_old_store_keeps_its_format(tmp_path, monkeypatch):
    old = old_format(monkeypatch, tmp_path / "old.zarr", "zarr")
    with TokenStore.open(old, "a") as store:
        store.append(["more"], [np.arange(3)], [["\u3000\n", "x\n"]])
    with TokenStore.open(old) as store:
        assert "captioned" not in store._record.array_lengths
        assert not (old / "captioned" / "c").exists()
        assert np.array_equal(store.captioned(), np.append(expected(), True))
        assert store.check() == []


def test_a_wrong_flag_is_found_by_check(tmp_path):
    path = build(tmp_path / "s.zarr", "zarr")
    chunk = path / "captioned" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[1] ^= 1
    chunk.write_bytes(bytes(data))
    with TokenStore.open(path) as store:
        problems = store.check()
    assert any(p.startswith("captioned: checksum mismatch") for p in problems), problems
    assert "captioned: the flags do not match the caption lines" in problems
