"""The training side attacked as an unlucky or hostile user would: text slot counters that
return something other than a count, resume states that are malformed or belong to another
dataset or epoch.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tokstore.torch import (CodeCollator, CodeItem, LengthBucketSampler, LoaderError,
                            ResumableLoader, collate_codes)

END, PAD = 512, 513
LENGTHS = np.random.default_rng(3).integers(1, 60, size=100)


def items(*lengths, caption="a b c"):
    return [CodeItem(torch.arange(n, dtype=torch.int64), caption, None) for n in lengths]


# --------------------------------------------------------------------------- text slot counts

@pytest.mark.parametrize("returned", [2.7, "3", None, 1.0])
def test_a_text_slot_callable_must_return_a_count(returned):
    """A tokenizer wrapper returning a float, a str or None must not be rounded, parsed or crash
    with a bare TypeError: the row's text slots would silently be wrong."""
    with pytest.raises(LoaderError, match="text_slots"):
        collate_codes(items(3, 4), END, PAD, 12, text_slots=lambda caption: returned)
    with pytest.raises(LoaderError, match="text_slots"):
        CodeCollator(END, PAD, block_size=12, text_slots=lambda caption: returned)(items(3))


def test_a_fixed_text_slot_count_must_be_a_count_in_collate_codes_too():
    with pytest.raises(LoaderError, match="text_slots"):
        collate_codes(items(3), END, PAD, 12, text_slots=2.5)


def test_integral_text_slot_counts_are_taken():
    rows = collate_codes(items(2, 1), END, PAD, 6,
                         text_slots=lambda caption: np.int64(2)).tokens.tolist()
    assert rows == [[PAD, PAD, 0, 1, END, PAD], [PAD, PAD, 0, END, PAD, PAD]]


# --------------------------------------------------------------------------- resume states

def sampler(lengths=LENGTHS, **args):
    return LengthBucketSampler(lengths, batch_size=8, pool_batches=2, seed=5, **args)


def test_a_state_of_another_dataset_with_as_many_samples_is_refused():
    """Same count, other lengths: the bucketed order differs, so resuming would skip and repeat
    samples of the new dataset."""
    first = sampler()
    it = iter(first)
    [next(it) for _ in range(4)]
    state = first.state_dict()
    other = LENGTHS[::-1].copy()
    assert [b.tolist() for b in sampler(other).epoch_batches()] != \
        [b.tolist() for b in first.epoch_batches()]
    with pytest.raises(LoaderError, match="lengths"):
        sampler(other).load_state_dict(state)
    again = sampler(LENGTHS.copy())
    again.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert [b for b in again] == [b.tolist() for b in first.epoch_batches()[4:]]


@pytest.mark.parametrize("state", [
    [], "epoch 3", {"sampler": []}, {"sampler": None},
    {"sampler": {"batches_done": 2}},
])
def test_malformed_loader_states_are_refused_clearly(state):
    loader = ResumableLoader(list(range(len(LENGTHS))), sampler(), collate_fn=list)
    with pytest.raises(LoaderError):
        loader.load_state_dict(state)


@pytest.mark.parametrize("change", [
    {"batches_done": "2"}, {"batches_done": 1.5}, {"batches_done": None}, {"epoch": "x"},
    {"epoch": -1}, {"epoch": 2.5}, {"batches_done": True},
])
def test_sampler_states_with_values_of_the_wrong_kind_are_refused(change):
    state = sampler().state_dict() | change
    fresh = sampler()
    with pytest.raises(LoaderError):
        fresh.load_state_dict(state)
    assert fresh.epoch == 0 and len(list(fresh)) == len(fresh)   # left as it was


def test_a_sampler_state_without_batches_done_is_refused():
    state = sampler().state_dict()
    del state["batches_done"]
    with pytest.raises(LoaderError, match="batches_done"):
        sampler().load_state_dict(state)


def test_moving_to_another_epoch_with_a_loaded_state_pending_is_refused():
    """A loop that loads epoch 3's state at batch 4 and then calls set_epoch(4) (an off-by-one
    epoch counter) would silently skip the rest of epoch 3."""
    first = sampler()
    first.set_epoch(3)
    state = first.state_dict(batches_done=4)
    loader = ResumableLoader(list(range(len(LENGTHS))), sampler(), collate_fn=list)
    loader.load_state_dict({"sampler": state})
    with pytest.raises(LoaderError, match="epoch 3"):
        loader.set_epoch(4)
    loader.set_epoch(3)                     # the epoch it resumes: fine
    rest = [batch for batch in loader]
    assert len(rest) == len(first) - 4
    loader.set_epoch(4)                     # once it has resumed, any epoch
    assert len(list(loader)) == len(first)


def test_states_at_an_epochs_edges_move_on_freely():
    """Loaded at batch 0 or after the last batch, nothing of the epoch is pending: set_epoch to
    another epoch is what the loop does next."""
    for done in (0, len(sampler())):
        resumed = sampler()
        resumed.load_state_dict(sampler().state_dict(batches_done=done) | {"epoch": 3})
        resumed.set_epoch(4)
        assert resumed.epoch == 4 and len(list(resumed)) == len(resumed)


# --------------------------------------------------------------------------- a batch as a list

@pytest.fixture()
def store_path(tmp_path):
    from tokstore import TokenStore

    path = tmp_path / "codes.zarr"
    with TokenStore.create(path, 512) as store:
        store.append([f"n{k}" for k in range(12)], [np.arange(k + 1) for k in range(12)],
                     [["a b\n", "c\n"]] * 12)
        store.commit()
    return path


def sort_by_length(batch):
    """T2M-GPT's collates sort the batch in place, longest first."""
    batch.sort(key=lambda it: it.codes.shape[0], reverse=True)
    return batch


def test_a_collate_that_sorts_or_shuffles_the_batch_in_place_works(store_path):
    """torch hands the collate what __getitems__ returns, which its contract says is a list of
    samples: a collate written for a plain dataset must not meet a read-only sequence."""
    import random

    from torch.utils.data import DataLoader

    from tokstore.torch import CodeDataset

    dataset = CodeDataset(store_path)
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=sort_by_length))
    assert [[it.name for it in b] for b in batches] == [
        ["n3", "n2", "n1", "n0"], ["n7", "n6", "n5", "n4"], ["n11", "n10", "n9", "n8"]]
    batch = dataset.__getitems__([0, 1, 2])
    random.Random(1).shuffle(batch)
    assert sorted(it.name for it in batch) == ["n0", "n1", "n2"]
    assert [it.name for it in batch + [dataset[3]]][-1] == "n3"
    assert [it.name for it in [dataset[3]] + batch][0] == "n3"
    del batch[0]
    batch.append(dataset[5])
    assert len(batch) == 3 and batch[-1].name == "n5"


def test_collate_codes_follows_a_batch_reordered_in_place(store_path):
    """After a collate reorders the batch, the rows must follow the new order, not the order the
    batch was read in."""
    from tokstore.torch import CodeDataset

    dataset = CodeDataset(store_path)
    batch = sort_by_length(dataset.__getitems__([1, 4, 2]))
    rows = collate_codes(batch, END, PAD, 8, text_slots=1)
    assert rows.names == ["n4", "n2", "n1"] and rows.lengths.tolist() == [5, 3, 2]
    assert rows.tokens.tolist()[0] == [PAD, 0, 1, 2, 3, 4, END, PAD]


# --------------------------------------------------------------------------- token dtypes

@pytest.fixture()
def big_codebook_store(tmp_path):
    from tokstore import TokenStore

    path = tmp_path / "codes.zarr"
    with TokenStore.create(path, 64000, meta={"legacy_code_dtype": "int32"}) as store:
        store.append(["a"], [np.array([63999, 40000, 5])], [["walks\n"]])
        store.commit()
    return path


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.float16, torch.bfloat16,
                                   torch.bool])
def test_a_dtype_that_cannot_hold_the_tokens_is_refused(big_codebook_store, dtype):
    """int16 would wrap code 63999 to -1537, float16 round it to 64000 (the end token)."""
    from tokstore.torch import CodeDataset

    with pytest.raises(LoaderError, match="64001"):
        CodeDataset(big_codebook_store, dtype=dtype)


def test_dtypes_that_hold_the_tokens_are_taken(big_codebook_store, tmp_path):
    from tokstore import TokenStore
    from tokstore.torch import CodeDataset

    assert CodeDataset(big_codebook_store, dtype=torch.int32)[0].codes.tolist() == [63999, 40000, 5]
    small = tmp_path / "small.zarr"
    with TokenStore.create(small, 100) as store:
        store.append(["a"], [np.array([99, 3])], [["walks\n"]])
        store.commit()
    dataset = CodeDataset(small, dtype=torch.uint8)
    assert dataset.collator(block_size=5)(dataset.__getitems__([0])).tokens.tolist() == [
        [101, 99, 3, 100, 101]]


@pytest.mark.parametrize("code_dtype", ["int16", "uint16", "float32", "float64", "bool"])
def test_motionmillion_code_dtypes_that_cannot_hold_the_tokens_are_refused(big_codebook_store,
                                                                          code_dtype):
    from tokstore.motionmillion import MotionMillionDataset

    with pytest.raises(LoaderError, match="code_dtype"):
        MotionMillionDataset(big_codebook_store, code_dtype=code_dtype,
                             text_encoder=lambda c: (torch.ones(1, 1, 2), torch.ones(1, 1)))


# --------------------------------------------------------------------------- MotionMillion's collate

def original_collate_tensors(batch):
    """MotionMillion's collate_tensors, re-stated: zeros of the largest size, each tensor added
    into its corner."""
    size = [max(b.shape[d] for b in batch) for d in range(batch[0].dim())]
    canvas = batch[0].new_zeros((len(batch), *size))
    for k, b in enumerate(batch):
        corner = canvas[k]
        for d in range(b.dim()):
            corner = corner.narrow(d, 0, b.shape[d])
        corner.add_(b)
    return canvas


def test_feature_padding_is_bit_identical_to_the_originals_sums():
    """The original adds each feature onto zeros: -0.0 comes out +0.0. Its batches must be
    identical bit for bit, not only equal as numbers."""
    from tokstore.motionmillion import collate_fn

    feats = [torch.tensor([[-0.0, 1.5], [2.0, -0.0]], dtype=torch.bfloat16),
             torch.tensor([[-0.0, -3.0]], dtype=torch.bfloat16)]
    masks = [torch.ones(2), torch.ones(1)]
    batch = [("c", torch.arange(4), torch.tensor(2), f, m, torch.tensor([f.shape[0]]))
             for f, m in zip(feats, masks)]
    got = collate_fn(batch)
    want = original_collate_tensors(feats)
    assert got[3].dtype == want.dtype
    assert torch.equal(got[3].view(torch.int16), want.view(torch.int16))
    assert torch.equal(got[4], original_collate_tensors(masks))


@pytest.mark.parametrize("args", [dict(batch_size=2.5), dict(batch_size="8"), dict(batch_size=0),
                                  dict(batch_size=8, pool_batches=1.5),
                                  dict(batch_size=8, seed=-1), dict(batch_size=8, seed=0.5),
                                  dict(batch_size=8, num_replicas=2, rank=0.5),
                                  dict(batch_size=8, num_replicas=2.0, rank=1)])
def test_sampler_arguments_that_are_not_counts_are_refused(args):
    with pytest.raises(LoaderError):
        LengthBucketSampler(LENGTHS, **args)


@pytest.mark.parametrize("epoch", [-1, 1.5, "2", None])
def test_set_epoch_takes_a_count(epoch):
    s = sampler()
    with pytest.raises(LoaderError, match="epoch"):
        s.set_epoch(epoch)
    s.set_epoch(np.int64(2))
    assert s.epoch == 2 and len(list(s)) == len(s)


# --------------------------------------------------------------------------- the drop-in, again

class OriginalMotionMillion:
    """Text2MotionDataset_motionmillion re-stated a second time, line for line from its rule, on
    an all_data.pkl: what the drop-in must equal under the same seeds."""

    def __init__(self, pickle_path, encoder, codebook_size, max_motion_length=301):
        import pickle as pickle_module

        with open(pickle_path, "rb") as f:
            all_data = pickle_module.load(f)
        self.encoder, self.end, self.pad = encoder, codebook_size, codebook_size + 1
        self.max_motion_length, self.max_text_length = max_motion_length, 150
        self.data_dict, self.name_list = {}, []
        for name in all_data["file_names"]:
            text_ref = all_data["text_data"][name]
            if len(text_ref) == 0:
                continue
            text = [line.strip() for line in text_ref if line.strip() != ""]
            self.data_dict[name] = (all_data["code_data"][name], text)
            self.name_list.append(name)

    def __len__(self):
        return len(self.data_dict)

    def __getitem__(self, item):
        import random

        token_list, text_list = self.data_dict[self.name_list[item]]
        m_tokens = torch.tensor(random.choice(token_list))
        caption = random.choice(text_list)
        feat, y_mask = self.encoder(caption)
        feat = feat.to(dtype=torch.bfloat16)
        if np.random.choice([False, False, True]):
            m_tokens = m_tokens[:-1] if np.random.choice([True, False]) else m_tokens[1:]
        m_tokens_len = m_tokens.shape[0]
        text_tokens_len = feat.shape[1]
        if text_tokens_len > self.max_text_length:
            feat, y_mask = feat[:, :self.max_text_length, :], y_mask[:, :self.max_text_length]
            text_tokens_len = self.max_text_length
        padding_length = self.max_motion_length - text_tokens_len
        ones = lambda n, v: torch.ones(n, dtype=torch.int32) * v   # noqa: E731
        pieces = [ones(text_tokens_len, self.pad), m_tokens, ones(1, self.end)]
        if m_tokens_len + 1 < padding_length:
            pieces.append(ones(padding_length - 1 - m_tokens_len, self.pad))
        return (caption, torch.cat(pieces).reshape(-1), torch.tensor(m_tokens_len), feat.squeeze(),
                y_mask.squeeze(), torch.tensor(text_tokens_len).unsqueeze(0))


def per_word(caption):
    """One feature per word, plus one, as a T5 tokenizer adds </s>."""
    count = len(caption.split()) + 1
    feat = torch.arange(count * 3, dtype=torch.float32).reshape(1, count, 3) + len(caption)
    return feat, torch.ones((1, count), dtype=torch.int64)


@pytest.mark.parametrize("legacy_dtype", ["int32", "int64"])
def test_drop_in_on_an_imported_hdf5_store_equals_the_original(tmp_path, legacy_dtype):
    """Built, exported, re-imported from the pickle into HDF5 (no model meta there): items equal
    the original's on the first pickle, 1- and 2-code samples drawn with the augmentation, a
    caption past 150 tokens, blank lines, a name with no caption lines skipped."""
    import random

    from build_helpers import run_cli
    from tokstore import TokenStore
    from tokstore.motionmillion import MotionMillionDataset

    names = ["one", "two", "none", "long", "many", "ü/ñame", "three", "full"]
    codes = [np.array([7]), np.array([8, 9]), np.arange(4), np.arange(10), np.arange(200),
             np.array([1, 2, 3, 4]), np.array([5, 6, 7]), np.arange(299)]
    texts = [["walks\n"], ["runs fast\n", "  \n", "jumps\n"], [], [" x" * 170 + "\n"],
             ["a\n", "b c\n", "d e f\n"], ["ü walks\n"], ["\n", "turns\n"], ["full row\n"]]
    first = tmp_path / "codes.zarr"
    with TokenStore.create(first, 64000, meta={"legacy_code_dtype": legacy_dtype}) as store:
        store.append(names, codes, texts)
        store.commit()
    assert run_cli("export-pickle", first, tmp_path / "all_data.pkl").exit_code == 0
    imported = tmp_path / "imported.h5"
    result = run_cli("import", "--store", imported, "--pickle", tmp_path / "all_data.pkl",
                     "--codebook-size", 64000)
    assert result.exit_code == 0, result.output
    ours = MotionMillionDataset(imported, text_encoder=per_word, codebook_size=64000)
    theirs = OriginalMotionMillion(tmp_path / "all_data.pkl", per_word, 64000)
    assert len(ours) == len(theirs) == 7
    seen_lengths = set()
    for seed in range(40):
        order = np.random.default_rng(seed).permutation(7).tolist()
        items = []
        for dataset in (ours, theirs):
            random.seed(seed)
            np.random.seed(seed)
            items.append([dataset[i] for i in order])
        for got, want in zip(*items):
            assert got[0] == want[0]
            for a, b in zip(got[1:], want[1:]):
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            seen_lengths.add((got[0], int(got[2])))
    assert {("walks", 0), ("walks", 1), ("runs fast", 1), ("runs fast", 2)} <= seen_lengths
    assert ("full row", 299) in seen_lengths and ("full row", 298) in seen_lengths


def test_first_reads_from_two_threads_at_once(store_path, monkeypatch):
    """A thread-based prefetcher: thread B reads while thread A is still setting up the
    dataset's per-process state (A paused between opening the store and making its generator)."""
    import threading

    import tokstore.torch as loader_module
    from tokstore.torch import CodeDataset

    dataset = CodeDataset(store_path, seed=0)
    made, b_done = [], threading.Event()
    real = loader_module._process_rng

    def slow_rng(seed, stream):
        made.append(threading.current_thread().name)
        if len(made) == 1:
            b_done.wait(10)
        return real(seed, stream)

    monkeypatch.setattr(loader_module, "_process_rng", slow_rng)
    results, errors = {}, []

    def read(key, index):
        try:
            results[key] = dataset[index]
        except Exception as exc:   # what the test reports
            errors.append(exc)
        finally:
            if key == "B":
                b_done.set()

    a = threading.Thread(target=read, args=("A", 0), name="A")
    a.start()
    while not made:
        pass
    b = threading.Thread(target=read, args=("B", 3), name="B")
    b.start()
    b.join(10)
    a.join(10)
    assert errors == [] and results["A"].name == "n0" and results["B"].name == "n3"


# --------------------------------------------------------------------------- collate arguments

@pytest.mark.parametrize("drops", [[1], [0, 1, 2], [5, 0], [-1, 0], [0.5, 0]])
def test_drops_must_be_one_choice_per_item(drops):
    """One drop for a batch of two would broadcast to both; 5 would read as 'drop the last'."""
    with pytest.raises(LoaderError, match="drops"):
        collate_codes(items(3, 4), END, PAD, 8, drops=drops)


def test_valid_drops_are_applied_per_item():
    from tokstore.torch import DROP_FIRST, DROP_LAST, KEEP

    batch = collate_codes(items(3, 4, 2), END, PAD, 7, drops=np.array([DROP_FIRST, DROP_LAST, KEEP]))
    assert batch.tokens.tolist() == [[PAD, 1, 2, END, PAD, PAD, PAD],
                                     [PAD, 0, 1, 2, END, PAD, PAD],
                                     [PAD, 0, 1, END, PAD, PAD, PAD]]


@pytest.mark.parametrize("block_size", [301.0, "301", 0, -5, True])
def test_block_size_must_be_a_count_with_room(block_size):
    with pytest.raises(LoaderError, match="block_size"):
        CodeCollator(END, PAD, block_size=block_size, layout="t2m-gpt")
    with pytest.raises(LoaderError, match="block_size"):
        collate_codes(items(3), END, PAD, block_size, layout="t2m-gpt")


def test_a_state_saved_with_torch_save_loads_with_weights_only(tmp_path):
    """torch.load defaults to weights_only=True, which refuses numpy scalars: a state must hold
    plain ints even when the sampler was given numpy ones (a config read with numpy)."""
    made = LengthBucketSampler(LENGTHS, batch_size=np.int64(8), pool_batches=np.int64(2),
                               seed=np.int64(5), drop_last=np.bool_(True),
                               num_replicas=np.int64(2), rank=np.int64(1))
    made.set_epoch(np.int64(3))
    loader = ResumableLoader(list(range(len(LENGTHS))), made, collate_fn=list)
    it = iter(loader)
    next(it)
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    again = ResumableLoader(list(range(len(LENGTHS))), LengthBucketSampler(
        LENGTHS, batch_size=8, pool_batches=2, seed=5, drop_last=True, num_replicas=2, rank=1),
        collate_fn=list)
    again.load_state_dict(state)
    again.set_epoch(3)
    assert [next(it)] + list(it) == list(again)


# --------------------------------------------------------------------------- name lookup

@pytest.mark.parametrize("file", ["c.zarr", "c.h5"])
def test_long_and_prefix_sharing_names_are_told_apart(tmp_path, file):
    from tokstore import TokenStore

    names = ["a" * 5000, "a" * 4999, "a" * 5001, "b" * 5000, "é/中文/😀", "x\ty", " lead", "0", "00"]
    with TokenStore.create(tmp_path / file, 512, chunk_bytes=256) as store:
        store.append(names, [np.arange(2)] * len(names), [["x\n"]] * len(names))
        store.commit()
    with TokenStore.open(tmp_path / file) as store:
        assert [store.index_of(name) for name in names] == list(range(len(names)))
        for absent in ["a" * 5002, "a" * 4998, "é/中文", "lead", "000", "\ud800", b"0", None, 0]:
            assert absent not in store
    with TokenStore.create(tmp_path / ("empty" + file), 512) as store:
        store.commit()
    with TokenStore.open(tmp_path / ("empty" + file)) as store:
        assert "" not in store and "a" not in store
