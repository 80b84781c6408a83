"""MotionMillion's row layout in the collate, and batched reads (TokenStore.batch, __getitems__).

Expected rows are written here from MotionMillion's rule, independently of the implementation:
    [pad] * text_tokens_len + codes + [end] + [pad] * (max_motion_length - text_tokens_len - 1 - len)
with no trailing pad when the row is full.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tokstore import TokenStore
from tokstore.torch import (DROP_FIRST, DROP_LAST, KEEP, CodeDataset, CodeItem, CodeItems,
                            LengthBucketSampler, LoaderError, ResumableLoader, collate_codes)

END, PAD, BLOCK = 64000, 64001, 301
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def motionmillion_row(codes, text_tokens_len, max_motion_length=BLOCK):
    row = [PAD] * text_tokens_len + list(codes) + [END]
    return row + [PAD] * (max_motion_length - len(row))


def item(codes, caption="a caption", name="n"):
    return CodeItem(torch.tensor(codes, dtype=torch.int64), caption, name)


def words(caption: str) -> int:
    """A stand-in for a tokenizer's token count: one slot per word."""
    return len(caption.split())


def test_fixed_text_slots_rows_are_motionmillions():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 64000, size=n).tolist() for n in (5, 1, 299, 120)]
    items = [item(c) for c in codes]
    batch = collate_codes(items, END, PAD, block_size=BLOCK)
    expected = torch.tensor([motionmillion_row(c, 1) for c in codes])
    assert torch.equal(batch.tokens, expected)
    assert batch.tokens[2, -1] == END                     # 1 + 299 + 1 = 301: full, no pad
    assert batch.lengths.tolist() == [5, 1, 299, 120]
    assert batch.text_lengths.tolist() == [1, 1, 1, 1]

    dropped = collate_codes(items, END, PAD, block_size=BLOCK,
                            drops=[DROP_FIRST, DROP_LAST, DROP_LAST, KEEP])
    assert torch.equal(dropped.tokens, torch.tensor([
        motionmillion_row(codes[0][1:], 1), motionmillion_row(codes[1], 1),
        motionmillion_row(codes[2][:-1], 1), motionmillion_row(codes[3], 1)]))
    assert dropped.lengths.tolist() == [4, 1, 298, 120]


def test_per_caption_text_slots_rows_are_motionmillions():
    rng = np.random.default_rng(1)
    captions = ["a person walks", "jumps", "someone waves both hands twice then sits", "x " * 150]
    lengths = [10, 292, 40, 150]
    codes = [rng.integers(0, 64000, size=n).tolist() for n in lengths]
    items = [item(c, cap) for c, cap in zip(codes, captions)]
    batch = collate_codes(items, END, PAD, block_size=BLOCK, text_slots=words)
    slots = [3, 1, 7, 150]
    assert torch.equal(batch.tokens,
                       torch.tensor([motionmillion_row(c, t) for c, t in zip(codes, slots)]))
    assert batch.tokens[3, -1] == END                     # 150 + 150 + 1 = 301: full
    assert batch.text_lengths.tolist() == slots
    assert batch.lengths.tolist() == lengths

    unpadded = collate_codes(items[:2], END, PAD, text_slots=words)   # to the longest row
    assert unpadded.tokens.shape == (2, 1 + 292 + 1)
    assert unpadded.tokens[0].tolist() == motionmillion_row(codes[0], 3, 294)


def test_rows_too_long_keep_their_head_and_the_end_token():
    codes = list(range(400))
    batch = collate_codes([item(codes, "two words")], END, PAD, block_size=BLOCK, text_slots=words)
    assert batch.tokens[0].tolist() == motionmillion_row(codes[:298], 2)
    assert batch.lengths.tolist() == [298]
    with pytest.raises(LoaderError, match="text slots"):
        collate_codes([item([1, 2], "w " * 301)], END, PAD, block_size=BLOCK, text_slots=words)
    with pytest.raises(LoaderError, match="layout"):
        collate_codes([item([1])], END, PAD, layout="motion-million")


def test_t2m_gpt_layout_is_codes_first():
    batch = collate_codes([item([4, 5, 6])], END, PAD, block_size=6, layout="t2m-gpt")
    assert batch.tokens.tolist() == [[4, 5, 6, END, PAD, PAD]]
    assert batch.text_lengths.tolist() == [0]


# --------------------------------------------------------------------------- over a store

TEXTS = [["a man walks forward.\n", "someone strolls.\n"], ["a person jumps.\n", "\n"],
         ["he waves\n", "  \n", "a wave of the hand.\n", "she waves twice.\n"],
         ["caf\u00e9 dance \u4e2d\n"], [], ["\n"]]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("layout") / "codes.zarr"
    rng = np.random.default_rng(2)
    names = [f"sub{k % 3}/clip {k:03d}" + ("\u00e9" if k % 7 == 0 else "") for k in range(60)]
    codes = [rng.integers(0, 64000, size=int(rng.integers(1, 300))).astype(np.int32)
             for _ in range(60)]
    texts = [TEXTS[k % len(TEXTS)] for k in range(60)]
    with TokenStore.create(path, 64000) as store:
        store.append(names, codes, texts)
        store.commit()
    return path


@pytest.mark.parametrize("backend_file", ["codes.zarr", "codes.h5"])
def test_store_batch_equals_sample_reads(tmp_path, backend_file):
    rng = np.random.default_rng(4)
    names = [f"a/{k}" + ("\u00fc" * (k % 3)) for k in range(50)]
    codes = [rng.integers(0, 500, size=int(rng.integers(0, 30))) for _ in range(50)]
    texts = [TEXTS[k % len(TEXTS)] for k in range(50)]
    with TokenStore.create(tmp_path / backend_file, 512, chunk_bytes=64) as store:  # many chunks
        store.append(names, codes, texts)
        store.commit()
    with TokenStore.open(tmp_path / backend_file) as store:
        indices = [7, 0, 49, 7, 23, 12]
        batch = store.batch(indices)
        assert batch.lengths.tolist() == [len(codes[i]) for i in indices]
        assert batch.codes.tolist() == [c for i in indices for c in codes[i].tolist()]
        assert batch.names() == [names[i] for i in indices]
        assert batch.texts() == [texts[i] for i in indices]
        assert batch.line_counts.tolist() == [len(texts[i]) for i in indices]
        empty = store.batch([])
        assert empty.codes.size == 0 and empty.names() == [] and empty.texts() == []
        with pytest.raises(IndexError):
            store.batch([3, 50])
        with pytest.raises(IndexError):
            store.batch([-1])
        with pytest.raises(TypeError):
            store.batch([1.5])


def test_getitems_reads_the_items_getitem_reads(store_path):
    per_item, batched = CodeDataset(store_path, seed=5), CodeDataset(store_path, seed=5)
    order = np.random.default_rng(0).permutation(len(per_item)).tolist()
    for first in range(0, len(order), 16):
        indices = order[first:first + 16]
        got = batched.__getitems__(indices)
        assert isinstance(got, CodeItems) and len(got) == len(indices)
        want = [per_item[i] for i in indices]
        assert [g.name for g in got] == [w.name for w in want]
        assert [g.caption for g in got] == [w.caption for w in want]
        assert all(torch.equal(g.codes, w.codes) for g, w in zip(got, want))
    nameless = CodeDataset(store_path, names=False).__getitems__([0, 1])
    assert [it.name for it in nameless] == [None, None]
    assert CodeDataset(store_path, names=False)[0].name is None


def test_dataloader_batches_are_motionmillion_rows_of_the_store(store_path):
    dataset = CodeDataset(store_path, seed=3)
    with TokenStore.open(store_path) as store:
        by_name = {store[i].name: store[i].codes.tolist() for i in range(len(store))}
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2,
                        multiprocessing_context="fork",
                        collate_fn=dataset.collator(block_size=BLOCK, text_slots=words),
                        generator=torch.Generator().manual_seed(1))
    seen = []
    for batch in loader:
        for row, name, caption, length in zip(batch.tokens.tolist(), batch.names,
                                              batch.captions, batch.lengths.tolist()):
            assert row == motionmillion_row(by_name[name], words(caption))
            assert length == len(by_name[name])
        seen += batch.names
    assert sorted(seen) == sorted(dataset[i].name for i in range(len(dataset)))
    assert len(seen) == 40                               # 20 of 60 have no caption worth keeping


# --------------------------------------------------------------------------- resumable loader

@pytest.mark.parametrize("before, after", [(2, 0), (0, 3), (2, 2)])
def test_resume_mid_epoch_yields_exactly_the_remaining_samples(store_path, before, after):
    dataset = CodeDataset(store_path, seed=1)

    def loader(workers):
        sampler = LengthBucketSampler(dataset.lengths, batch_size=3, pool_batches=2, seed=4)
        sampler.set_epoch(2)
        return ResumableLoader(dataset, sampler, num_workers=workers,
                               multiprocessing_context="fork" if workers else None,
                               collate_fn=dataset.collator(block_size=BLOCK))

    whole = [batch.names for batch in loader(0)]
    assert len(whole) == 14 and sorted(sum(whole, [])) == sorted(
        dataset[i].name for i in range(len(dataset)))
    first = loader(before)
    running = iter(first)
    seen = [next(running).names for _ in range(5)]      # workers have read further ahead
    state = pickle.loads(pickle.dumps(first.state_dict()))
    del running
    resumed = loader(after)
    resumed.load_state_dict(state)
    assert len(resumed) == 9
    rest = [batch.names for batch in resumed]
    assert seen + rest == whole
    assert resumed.state_dict()["sampler"]["batches_done"] == 14
    resumed.set_epoch(3)
    assert len(list(resumed)) == 14                      # the next epoch from its beginning
    with pytest.raises(LoaderError, match="sampler"):
        resumed.load_state_dict({"epoch": 2})


def test_batches_pickle_by_value_and_come_back_equal(store_path):
    dataset = CodeDataset(store_path)
    batch = dataset.collator(block_size=BLOCK, text_slots=words)(dataset.__getitems__([3, 1, 2]))
    again = pickle.loads(pickle.dumps(batch))
    assert type(again) is type(batch) and again.captions == batch.captions
    assert again.names == batch.names
    for name in ("tokens", "lengths", "text_lengths"):
        a, b = getattr(again, name), getattr(batch, name)
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    assert again.lengths.dtype == torch.int64
