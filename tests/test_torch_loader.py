"""tokstore.torch: the training dataset, collate and length-bucketing sampler."""
from __future__ import annotations

import multiprocessing
import pickle
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from tokstore import TokenStore
from tokstore.torch import (DROP_FIRST, DROP_LAST, KEEP, CodeBatch, CodeCollator, CodeDataset,
                            CodeItem, LengthBucketSampler, LoaderError, collate_codes,
                            drop_choices, parse_humanml3d_line, plain_captions, subclip_bounds)

# fork where it is the safe default (Linux); macOS and Windows start workers with spawn
FORK = "fork" if sys.platform == "linux" else "spawn"

END, PAD = 64000, 64001
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def item(codes, caption="a caption", name="n"):
    return CodeItem(torch.tensor(codes, dtype=torch.int64), caption, name)


# --------------------------------------------------------------------------- collate

def test_collate_matches_hand_built_layout_with_block_size_crop_and_drops():
    items = [item([5, 6, 7], "walks", "a"), item([8], "runs", "b"),
             item([9, 10, 11, 12, 13, 14], "jumps", "c"), item([1, 2], "sits", "d")]
    batch = collate_codes(items, END, PAD, block_size=5,
                          drops=[DROP_FIRST, DROP_LAST, DROP_LAST, KEEP], layout="t2m-gpt")
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
    batch = collate_codes([item([3, 4]), item([7, 8, 9, 1])], END, PAD, layout="t2m-gpt")
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
    first = CodeCollator(END, PAD, block_size=12, augment=True, seed=3, layout="t2m-gpt")(items)
    again = pickle.loads(pickle.dumps(CodeCollator(END, PAD, block_size=12, augment=True,
                                                   seed=3, layout="t2m-gpt")))(items)
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
    with pytest.raises(LoaderError, match="rank"):
        LengthBucketSampler(LENGTHS, 16, num_replicas=1, rank=0).load_state_dict(
            LengthBucketSampler(LENGTHS, 16, num_replicas=2, rank=1).state_dict() | {
                "num_replicas": 1})
    with pytest.raises(LoaderError, match="batches_done"):
        LengthBucketSampler(LENGTHS, batch_size=16).load_state_dict(state | {"batches_done": 99})


# --------------------------------------------------------------------------- dataset over a store

CAPTIONS = [["a man walks forward.\n", "someone strolls.\n"], ["a person jumps.\n"],
            ["he waves\n", "\n", "a wave of the hand.\n", "she waves twice.\n"]]


def build_store(path, count=24, backend="zarr", texts=None, meta=None, seed=0):
    """`count` samples of 3..40 codes; captions cycle through CAPTIONS unless given."""
    rng = np.random.default_rng(seed)
    names = [f"sub{k % 3}/clip {k:03d}" for k in range(count)]
    codes = [rng.integers(0, 64000, size=int(rng.integers(3, 41))).astype(np.int32)
             for _ in range(count)]
    texts = texts or [CAPTIONS[k % len(CAPTIONS)] for k in range(count)]
    with TokenStore.create(path, 64000, backend=backend, meta=meta or {}) as store:
        store.append(names, codes, texts)
        store.commit()
    return names, codes


def items_of(dataset, **loader_args):
    """Every item of the dataset through a DataLoader, in index order."""
    loader = DataLoader(dataset, batch_size=5, collate_fn=list, **loader_args)
    return [it for batch in loader for it in batch]


def assert_items_are_the_store(items, names, codes):
    assert [it.name for it in items] == names
    for it, expected in zip(items, codes):
        assert it.codes.dtype == torch.int64
        assert it.codes.tolist() == expected.tolist()


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("zarr") / "codes.zarr"
    return path, *build_store(path)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
@pytest.mark.parametrize("workers", [0, 2])
def test_items_are_the_store_codes_with_forked_workers(tmp_path, backend, workers):
    path = tmp_path / ("codes.zarr" if backend == "zarr" else "codes.h5")
    names, codes = build_store(path, backend=backend)
    dataset = CodeDataset(path)
    assert len(dataset) == len(names)
    context = FORK if workers else None
    assert_items_are_the_store(items_of(dataset, num_workers=workers,
                                        multiprocessing_context=context), names, codes)


def test_items_with_four_forked_workers_and_an_open_store_in_the_parent(zarr_store):
    path, names, codes = zarr_store
    dataset = CodeDataset(path)
    assert dataset[0].name == names[0]     # the parent has the store open when it forks
    assert_items_are_the_store(items_of(dataset, num_workers=4, multiprocessing_context=FORK),
                               names, codes)


def test_codes_in_another_dtype(zarr_store):
    path, names, codes = zarr_store
    dataset = CodeDataset(path, dtype=torch.int32)
    assert dataset[5].codes.dtype == torch.int32
    assert dataset[5].codes.tolist() == codes[5].tolist()
    batch = dataset.collator(block_size=50, layout="t2m-gpt")([dataset[5], dataset[6]])
    assert batch.tokens.dtype == torch.int32
    assert batch.tokens[0, :len(codes[5]) + 1].tolist() == codes[5].tolist() + [64000]


def test_items_with_forkserver_workers(tmp_path):
    names, codes = build_store(tmp_path / "codes.h5", count=10, backend="hdf5")
    dataset = CodeDataset(tmp_path / "codes.h5")
    dataset[3]                             # an open store must not travel in the pickle
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone[3].codes.tolist() == codes[3].tolist()
    # forkserver pickles the dataset to each worker as spawn does, into a process that never
    # opened the store; its workers fork from one process that has imported torch once, instead
    # of four fresh interpreters importing it. A spawn DataLoader itself (a fresh interpreter
    # per worker, macOS' and Windows' default) reads both backends in test_platform.py.
    preloaded = "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows
    context = multiprocessing.get_context("forkserver" if preloaded else "spawn")
    if preloaded:
        context.set_forkserver_preload(["torch", "tokstore.torch"])
    loader = DataLoader(dataset, batch_size=3, collate_fn=list, num_workers=4,
                        multiprocessing_context=context, persistent_workers=True)
    for _ in range(2):                     # the second epoch reuses the workers and their store
        assert_items_are_the_store([it for batch in loader for it in batch], names, codes)


def test_batches_cross_as_collated_tensors_from_workers(zarr_store):
    path, names, codes = zarr_store
    dataset = CodeDataset(path, seed=1)
    collate = dataset.collator(block_size=16, augment=True, layout="t2m-gpt")

    def run():
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2,
                            multiprocessing_context=FORK, collate_fn=collate,
                            generator=torch.Generator().manual_seed(5))
        return list(loader)

    batches = run()
    assert all(isinstance(b, CodeBatch) and b.tokens.shape == (8, 16) for b in batches)
    assert sorted(n for b in batches for n in b.names) == sorted(names)
    for batch in batches:
        for row, length, name in zip(batch.tokens, batch.lengths.tolist(), batch.names):
            whole = codes[names.index(name)][:16].tolist()
            got = row[:length].tolist()
            assert got in (whole[:15], whole[1:16], whole[:-1][:15])   # kept or one end dropped
            assert row[length] == dataset.end_token == 64000
            assert (row[length + 1:] == dataset.pad_token).all()
    again = run()
    assert all(torch.equal(a.tokens, b.tokens) and a.captions == b.captions
               for a, b in zip(batches, again))


# --------------------------------------------------------------------------- distributed

def test_distributed_sampler_ranks_split_the_dataset(zarr_store):
    path, names, _ = zarr_store
    dataset = CodeDataset(path)
    shares = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=list,
                            num_workers=2, multiprocessing_context=FORK)
        shares.append([it.name for batch in loader for it in batch])
    assert len(shares[0]) == len(shares[1]) == 12
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(names)


def test_bucket_sampler_feeds_a_dataloader_per_rank(zarr_store):
    path, names, codes = zarr_store
    dataset = CodeDataset(path)
    assert dataset.lengths.tolist() == [len(c) for c in codes]
    shares = []
    for rank in range(2):
        sampler = LengthBucketSampler(dataset.lengths, batch_size=4, num_replicas=2, rank=rank)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2,
                            multiprocessing_context=FORK,
                            collate_fn=dataset.collator(layout="t2m-gpt"))
        batches = list(loader)
        assert len(batches) == len(sampler) == 3
        for b in batches:
            assert b.tokens.shape[1] == int(b.lengths.max()) + 1
        shares.append([n for b in batches for n in b.names])
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(names)


# --------------------------------------------------------------------------- captions and selection

def test_captions_are_stripped_random_and_seedable(zarr_store):
    path, names, _ = zarr_store
    dataset = CodeDataset(path, seed=11)
    draws = [dataset[2].caption for _ in range(40)]
    assert set(draws) == {"he waves", "a wave of the hand.", "she waves twice."}
    replay = CodeDataset(path, seed=11)
    assert [replay[2].caption for _ in range(40)] == draws
    other = CodeDataset(path, seed=12)
    assert [other[2].caption for _ in range(40)] != draws
    everything = CodeDataset(path, all_captions=True)
    assert everything[0].caption == ["a man walks forward.", "someone strolls."]
    assert everything[2].caption == ["he waves", "a wave of the hand.", "she waves twice."]


def test_samples_without_captions_are_dropped(tmp_path):
    texts = [["walks\n"], [], ["\n", "   \n"], ["\n", "runs\n"], ["\u3000\n"],
             ["", "\x0b\x1c\n"], ["", "\u00e9\n"], ["\xa0 ok\n"]]
    names, _ = build_store(tmp_path / "c.zarr", count=len(texts), texts=texts)
    kept = CodeDataset(tmp_path / "c.zarr")
    assert [kept[i].name for i in range(len(kept))] == [names[k] for k in (0, 3, 6, 7)]
    assert [kept[i].caption for i in range(len(kept))] == ["walks", "runs", "\u00e9", "ok"]
    everything = CodeDataset(tmp_path / "c.zarr", drop_uncaptioned=False)
    assert len(everything) == len(texts) and everything[1].caption == everything[2].caption == ""


def test_caption_scan_agrees_with_stripping_every_line(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    pieces = ["", "\n", " ", "\t", "\x1f", "a", "\u3000", "\u2003", "\xa0", "\u00e9", "\x85",
              "\u4e2d", "walks", "."]
    texts = [["".join(rng.choice(pieces, size=rng.integers(0, 4))) + "\n" * int(rng.integers(2))
              for _ in range(rng.integers(0, 4))] for _ in range(300)]
    names, _ = build_store(tmp_path / "c.zarr", count=len(texts), texts=texts)
    monkeypatch.setattr("tokstore.store.captions._TEXT_WINDOW", 5)  # many windows, lines across them
    kept = CodeDataset(tmp_path / "c.zarr")
    expected = [name for name, lines in zip(names, texts) if plain_captions(lines)]
    assert 50 < len(expected) < 250
    assert [kept[i].name for i in range(len(kept))] == expected


def test_select_filters_and_split_file(zarr_store, tmp_path):
    path, names, codes = zarr_store
    lengths = np.array([len(c) for c in codes])
    short = CodeDataset(path, max_len=20)
    assert short.lengths.tolist() == lengths[lengths <= 20].tolist()
    sub1 = CodeDataset(path, name_glob="sub1/*")
    assert [sub1[i].name for i in range(len(sub1))] == names[1::3]
    jumps = CodeDataset(path, text_contains="jumps")
    assert len(jumps) == 8

    split = tmp_path / "train.txt"
    split.write_text(f"{names[7]}\n{names[2]}\n\n{names[4]}\n")
    chosen = CodeDataset(path, split=split)
    assert [chosen[i].name for i in range(3)] == [names[7], names[2], names[4]]
    both = CodeDataset(path, split=split, name_glob="sub1/*")
    assert [both[i].name for i in range(len(both))] == [names[7], names[4]]
    split.write_text(f"{names[0]}\nnot/a name\n")
    with pytest.raises(LoaderError, match="not/a name"):
        CodeDataset(path, split=split)


# --------------------------------------------------------------------------- HumanML3D

def test_humanml3d_captions_and_subclips(tmp_path):
    texts = [["a man walks.#a/DET man/NOUN walk/VERB#0.0#0.0\n",
              "he turns.#he/PRON turn/VERB#0.5#1.5\n",        # codes [2, 7)
              "too short.#too/ADV#0.1#0.15\n",                 # int(0.5) == int(0.75): skipped
              "broken line without fields\n"],
             ["only a sub-clip.#only/ADV#nan#nan\n", "then jumps.#jump/VERB#1.0#2.2\n"],
             ["just a part.#part/NOUN#0.2#0.8\n"]]
    meta = {"model_config": {"down_t": 2}}             # unit_length 4
    names, codes = build_store(tmp_path / "h.zarr", count=3, texts=texts, meta=meta)
    dataset = CodeDataset(tmp_path / "h.zarr", caption_format="humanml3d", all_captions=True)
    got = {dataset[i].name: dataset[i] for i in range(len(dataset))}
    assert set(got) == {names[0], f"{names[0]}_0.500000_1.500000", names[1],
                        f"{names[1]}_1.000000_2.200000", f"{names[2]}_0.200000_0.800000"}
    assert got[names[0]].caption == ["a man walks."]
    assert got[names[0]].codes.tolist() == codes[0].tolist()
    assert got[f"{names[0]}_0.500000_1.500000"].codes.tolist() == codes[0][2:7].tolist()
    assert got[f"{names[0]}_0.500000_1.500000"].caption == ["he turns."]
    assert got[names[1]].caption == ["only a sub-clip."]            # NaN times: whole motion
    assert got[f"{names[1]}_1.000000_2.200000"].codes.tolist() == codes[1][5:11].tolist()
    assert got[f"{names[2]}_0.200000_0.800000"].codes.tolist() == codes[2][1:4].tolist()
    lengths = dict(zip((dataset[i].name for i in range(len(dataset))), dataset.lengths))
    assert all(lengths[name] == len(item.codes) for name, item in got.items())

    slow = CodeDataset(tmp_path / "h.zarr", caption_format="humanml3d", fps=10)
    slow_items = {slow[i].name: slow[i] for i in range(len(slow))}
    assert slow_items[f"{names[0]}_0.500000_1.500000"].codes.tolist() == codes[0][1:3].tolist()
    with pytest.raises(LoaderError, match="contradicts"):
        CodeDataset(tmp_path / "h.zarr", caption_format="humanml3d", unit_length=8)


def test_humanml3d_unit_length_from_argument_when_meta_has_none(tmp_path):
    texts = [["walks.#walk/VERB#0.0#0.0\n", "turns.#turn/VERB#0.4#0.8\n"]]
    names, codes = build_store(tmp_path / "h.zarr", count=1, texts=texts)
    with pytest.raises(LoaderError, match="unit_length"):
        CodeDataset(tmp_path / "h.zarr", caption_format="humanml3d")
    dataset = CodeDataset(tmp_path / "h.zarr", caption_format="humanml3d", unit_length=2)
    sub = [dataset[i] for i in range(len(dataset)) if dataset[i].name != names[0]]
    assert sub[0].codes.tolist() == codes[0][4:8].tolist() and sub[0].caption == "turns."
