"""tokstore.torch: the training dataset, collate and length-bucketing sampler."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tokstore.torch import (DROP_FIRST, DROP_LAST, KEEP, CodeCollator, CodeItem,
                            LengthBucketSampler, LoaderError, collate_codes, drop_choices,
                            parse_humanml3d_line, plain_captions, subclip_bounds)

END, PAD = 64000, 64001


def item(codes, caption="a caption", name="n"):
    return CodeItem(torch.tensor(codes, dtype=torch.int64), caption, name)


# --------------------------------------------------------------------------- collate

def test_collate_matches_hand_built_layout_with_block_size_crop_and_drops():
    items = [item([5, 6, 7], "walks", "a"), item([8], "runs", "b"),
             item([9, 10, 11, 12, 13, 14], "jumps", "c"), item([1, 2], "sits", "d")]
    batch = collate_codes(items, END, PAD, block_size=5,
                          drops=[DROP_FIRST, DROP_LAST, DROP_LAST, KEEP])
    expected = torch.tensor([
        [6, 7, END, PAD, PAD],        # first code dropped
        [8, END, PAD, PAD, PAD],      # a single code is never dropped
        [9, 10, 11, 12, END],         # last dropped (14), then cropped to block_size - 1
        [1, 2, END, PAD, PAD],
    ])
    assert torch.equal(batch.tokens, expected)
    assert batch.tokens.dtype == torch.int64
    assert batch.lengths.tolist() == [2, 1, 4, 2]
    assert batch.captions == ["walks", "runs", "jumps", "sits"]
    assert batch.names == ["a", "b", "c", "d"]


def test_collate_pads_to_longest_in_batch_without_block_size():
    batch = collate_codes([item([3, 4]), item([7, 8, 9, 1])], END, PAD)
    assert torch.equal(batch.tokens, torch.tensor([[3, 4, END, PAD, PAD],
                                                   [7, 8, 9, 1, END]]))
    assert batch.lengths.tolist() == [2, 4]


def test_collator_augmentation_is_seeded_and_has_the_original_odds():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(drop_choices(50, rng_a), drop_choices(50, rng_b))
    choices = drop_choices(30000, np.random.default_rng(0))
    share = np.bincount(choices, minlength=3) / len(choices)
    assert share[KEEP] == pytest.approx(2 / 3, abs=0.02)
    assert share[DROP_FIRST] == pytest.approx(1 / 6, abs=0.02)
    assert share[DROP_LAST] == pytest.approx(1 / 6, abs=0.02)

    items = [item(list(range(10, 20)), name=str(k)) for k in range(60)]
    first = CodeCollator(END, PAD, block_size=12, augment=True, seed=3)(items)
    again = pickle.loads(pickle.dumps(CodeCollator(END, PAD, block_size=12, augment=True,
                                                   seed=3)))(items)
    assert torch.equal(first.tokens, again.tokens)
    assert set(first.lengths.tolist()) == {9, 10}
    dropped_first = first.tokens[first.lengths == 9][:, 0] == 11
    assert dropped_first.any() and not dropped_first.all()
    plain = CodeCollator(END, PAD, block_size=12)(items)
    assert (plain.lengths == 10).all()


def test_collator_rejects_a_block_without_room_for_the_end_token():
    with pytest.raises(LoaderError):
        CodeCollator(END, PAD, block_size=0)


# --------------------------------------------------------------------------- captions

def test_plain_captions_strip_and_drop_blank_lines():
    assert plain_captions(["a man walks.\n", "\n", "  \t\n", " he sits \n"]) == \
        ["a man walks.", "he sits"]
    assert plain_captions(["\n", "   "]) == []


def test_parse_humanml3d_lines_as_t2m_gpt():
    parsed = parse_humanml3d_line("a person waves.#a/DET person/NOUN wave/VERB#1.5#4.0\n")
    assert parsed == ("a person waves.", 1.5, 4.0)
    assert parse_humanml3d_line("walks#walk/VERB#nan#nan\n") == ("walks", 0.0, 0.0)
    assert parse_humanml3d_line("no fields at all\n") is None
    assert parse_humanml3d_line("walks#walk/VERB#x#1.0") is None
    assert parse_humanml3d_line("\n") is None
    assert subclip_bounds(1.5, 4.0, 20, 4) == (7, 20)     # int(7.5), int(20.0)
    assert subclip_bounds(0.3, 0.5, 20, 4) == (1, 2)


# --------------------------------------------------------------------------- sampler

LENGTHS = np.random.default_rng(5).integers(30, 150, size=1000)


def flat(batches):
    return [i for batch in batches for i in batch]


def test_bucket_sampler_covers_every_index_once_in_length_buckets():
    sampler = LengthBucketSampler(LENGTHS, batch_size=32, pool_batches=8, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(flat(batches)) == list(range(1000))
    spread = np.mean([np.ptp(LENGTHS[b]) for b in batches])
    random_spread = np.mean([np.ptp(LENGTHS[b]) for b in np.array_split(np.arange(1000), 32)])
    assert spread < random_spread / 4

    assert batches == list(LengthBucketSampler(LENGTHS, batch_size=32, pool_batches=8, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(LengthBucketSampler(LENGTHS, 32, pool_batches=8, seed=2)) != batches


def test_bucket_sampler_drop_last_keeps_full_batches():
    batches = list(LengthBucketSampler(LENGTHS, batch_size=64, drop_last=True))
    assert len(batches) == 15 and all(len(b) == 64 for b in batches)
    assert len(set(flat(batches))) == 960


@pytest.mark.parametrize("drop_last", [False, True])
def test_bucket_sampler_ranks_are_disjoint_and_even(drop_last):
    ranks = [LengthBucketSampler(LENGTHS, batch_size=25, num_replicas=2, rank=r, seed=4,
                                 drop_last=drop_last) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [flat(list(sampler)) for sampler in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 20
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(1000))

    odd = [list(LengthBucketSampler(LENGTHS, batch_size=30, num_replicas=2, rank=r))
           for r in range(2)]               # 34 batches: each rank 17, none shared
    assert len(odd[0]) == len(odd[1]) == 17
    assert not set(flat(odd[0])) & set(flat(odd[1]))


def test_bucket_sampler_resumes_mid_epoch_in_the_same_order():
    sampler = LengthBucketSampler(LENGTHS, batch_size=16, pool_batches=4, seed=9)
    sampler.set_epoch(3)
    full = list(sampler)
    it = iter(sampler)
    seen = [next(it) for _ in range(11)]
    state = pickle.loads(pickle.dumps(sampler.state_dict()))
    assert state["epoch"] == 3 and state["batches_done"] == 11

    resumed = LengthBucketSampler(LENGTHS, batch_size=16, pool_batches=4, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)                    # a training loop re-entering the epoch
    assert seen + list(resumed) == full
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(full)  # the next epoch starts from its beginning

    loader_state = sampler.state_dict(batches_done=5)   # what a loop with prefetch consumed
    again = LengthBucketSampler(LENGTHS, batch_size=16, pool_batches=4, seed=9)
    again.load_state_dict(loader_state)
    assert list(again) == full[5:]


def test_bucket_sampler_refuses_a_state_of_another_order():
    state = LengthBucketSampler(LENGTHS, batch_size=16).state_dict()
    with pytest.raises(LoaderError, match="batch_size"):
        LengthBucketSampler(LENGTHS, batch_size=32).load_state_dict(state)
    with pytest.raises(LoaderError, match="seed"):
        LengthBucketSampler(LENGTHS, batch_size=16, seed=1).load_state_dict(state)
