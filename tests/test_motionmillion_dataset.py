"""tokstore.motionmillion: the drop-in for MotionMillion's Text2MotionDataset_motionmillion.

`Restated` below re-states the original class from its rule (MotionMillion's loader on the
all_data.pkl that `tokstore export-pickle` writes), independently of the implementation; under
the same seeds both must give identical items.
"""
from __future__ import annotations

import pickle
import random
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from build_helpers import run_cli
from tokstore import TokenStore
from tokstore.motionmillion import MotionMillionDataset, collate_fn, motionmillion_loader
from tokstore.torch import LoaderError

CODEBOOK = 64000
WORDS = "a person walks slowly forward then turns left and waves both hands".split()


# --------------------------------------------------------------------------- text encoders

def word_features(caption: str, width: int = 6) -> torch.Tensor:
    """(1, L, width) float32: one deterministic feature per word (a tokenizer's stand-in)."""
    values = [[(sum(map(ord, w)) * (j + 1)) % 97 / 7.0 for j in range(width)]
              for w in caption.split()]
    return torch.tensor([values], dtype=torch.float32)


def t5_like(caption: str):
    """One feature per word and one for the end-of-text token, as T5's tokenizer adds </s>."""
    feat = word_features(caption + " </s>")
    return feat, torch.ones(feat.shape[:2], dtype=torch.int64)


def clip_like(caption: str):
    feat = word_features(caption).mean(dim=1, keepdim=True)
    return feat, torch.ones(feat.shape[:2])


# --------------------------------------------------------------------------- the re-statement

class Restated:
    """The original, re-stated: all_data.pkl -> (caption, m_tokens, m_tokens_len, feat, y_mask,
    text_tokens_len), with its random calls in its order."""

    def __init__(self, pickle_path, encoder, text_sum_way=None, split=None,
                 max_motion_length=301):
        with open(pickle_path, "rb") as f:
            data = pickle.load(f)
        self.encoder, self.text_sum_way = encoder, text_sum_way
        self.max_motion_length = max_motion_length
        self.entries, self.names = {}, []
        for name in split if split is not None else data["file_names"]:
            lines = data["text_data"][name]
            if len(lines) == 0:
                continue
            self.entries[name] = (data["code_data"][name],
                                  [line.strip() for line in lines if line.strip() != ""])
            self.names.append(name)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, item):
        rows, captions = self.entries[self.names[item]]
        m_tokens = torch.tensor(random.choice(rows))
        caption = random.choice(captions)
        feat, y_mask = self.encoder(caption)
        feat = feat.to(torch.bfloat16)
        if self.text_sum_way == "cls":
            feat = feat[:, 0:1, :]
        elif self.text_sum_way == "mean":
            feat = ((feat * y_mask[..., None]).sum(1) / y_mask.sum(1, keepdim=True))[:, None, :]
        elif self.text_sum_way == "sum":
            feat = (feat * y_mask[..., None]).sum(1)[:, None, :]
        if np.random.choice([False, False, True]):
            if np.random.choice([True, False]):
                m_tokens = m_tokens[:-1]
            else:
                m_tokens = m_tokens[1:]
        count, slots = len(m_tokens), feat.shape[1]
        if slots > 150:
            feat, y_mask, slots = feat[:, :150, :], y_mask[:, :150], 150
        row = [CODEBOOK + 1] * slots + m_tokens.tolist() + [CODEBOOK]
        row += [CODEBOOK + 1] * (self.max_motion_length - len(row))
        dtype = torch.promote_types(m_tokens.dtype, torch.int32)
        return (caption, torch.tensor(row, dtype=dtype), torch.tensor(count), feat.squeeze(),
                y_mask.squeeze(), torch.tensor([slots]))


def assert_same_item(got, want):
    assert got[0] == want[0]
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- data

def captions_for(k: int, rng) -> list[str]:
    if k % 11 == 3:
        return []                                          # skipped at construction
    lines = []
    for _ in range(1 + k % 3):
        lines.append(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) + ".\n")
    if k % 5 == 0:
        lines.insert(1, "   \n")                           # blank after strip(): dropped
    if k == 17:
        lines.append(" ".join(["go"] * 170) + "\n")        # past max_text_length 150
    return lines


def make_store(tmp_path, legacy_dtype="int32", count=40):
    rng = np.random.default_rng(7)
    names = [f"sub{k % 4}/motion {k:04d}" for k in range(count)]
    lengths = [300, 299, 298, 1] + [int(rng.integers(2, 200)) for _ in range(count - 4)]
    codes = [rng.integers(0, CODEBOOK, size=n) for n in lengths]
    texts = [captions_for(k, rng) for k in range(count)]
    path = tmp_path / "codes.zarr"
    with TokenStore.create(path, CODEBOOK, meta={"legacy_code_dtype": legacy_dtype}) as store:
        store.append(names, codes, texts)
        store.commit()
    result = run_cli("export-pickle", path, tmp_path / "all_data.pkl")
    assert result.exit_code == 0, result.output
    return path, tmp_path / "all_data.pkl", names


def both_in_order(ours, theirs, order, seed):
    got, want = [], []
    for dataset, out in ((ours, got), (theirs, want)):
        random.seed(seed)
        np.random.seed(seed)
        out.extend(dataset[i] for i in order)
    return got, want


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("legacy_dtype", ["int32", "int64"])
@pytest.mark.parametrize("encoder, text_sum_way", [(t5_like, None), (clip_like, None),
                                                   (t5_like, "mean"), (t5_like, "cls")])
def test_items_equal_the_original_under_the_same_seeds(tmp_path, legacy_dtype, encoder,
                                                       text_sum_way):
    path, pickle_path, _ = make_store(tmp_path, legacy_dtype)
    ours = MotionMillionDataset(path, text_encoder=encoder, text_sum_way=text_sum_way,
                                codebook_size=CODEBOOK)
    theirs = Restated(pickle_path, encoder, text_sum_way)
    assert len(ours) == len(theirs) == 36
    order = np.random.default_rng(1).permutation(len(ours)).tolist() * 3
    got, want = both_in_order(ours, theirs, order, seed=123)
    for a, b in zip(got, want):
        assert_same_item(a, b)
    assert {int(item[2]) for item in got} >= {300, 299}   # codes kept, and one dropped
    lengths = [len(item[1]) for item in got]
    assert 301 in lengths and max(lengths) > 301          # full rows, and rows left longer


def test_batches_equal_the_originals_through_a_dataloader(tmp_path):
    path, pickle_path, _ = make_store(tmp_path)
    ours = MotionMillionDataset(path, text_encoder=t5_like, max_motion_length=451)
    theirs = Restated(pickle_path, t5_like, max_motion_length=451)   # every row fits: stackable
    batches = []
    for dataset in (ours, theirs):
        random.seed(5)
        np.random.seed(5)
        batches.append(list(DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_fn,
                                       generator=torch.Generator().manual_seed(2))))
    assert len(batches[0]) == len(batches[1]) == 9
    for a, b in zip(*batches):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:]):
            assert x.dtype == y.dtype and torch.equal(x, y)
    first = batches[0][0]
    assert first[1].shape == (4, 451) and first[5].shape == (4, 1)
    assert first[3].shape[:2] == (4, int(first[5].max()))   # features padded to the longest


def test_split_file_order_and_duplicates(tmp_path):
    path, pickle_path, names = make_store(tmp_path)
    split = [names[9], names[3], names[2], names[9], names[30]]   # names[3]: no captions
    (tmp_path / "train.txt").write_text("\n".join(split) + "\n")
    ours = MotionMillionDataset(path, tmp_path / "train.txt", text_encoder=t5_like)
    theirs = Restated(pickle_path, t5_like, split=split)
    assert len(ours) == len(theirs) == 3                 # unique names, as the original's dict
    got, want = both_in_order(ours, theirs, [0, 1, 2, 3, 0], seed=9)
    for a, b in zip(got, want):
        assert_same_item(a, b)
    (tmp_path / "bad.txt").write_text(f"{names[0]}\nnot/there\n")
    with pytest.raises(LoaderError, match="not/there"):
        MotionMillionDataset(path, tmp_path / "bad.txt", text_encoder=t5_like)


def test_original_encoders_are_called_as_motionmillion_calls_them(tmp_path, monkeypatch):
    path, pickle_path, _ = make_store(tmp_path)
    calls = []

    def tokenize(caption, truncate):
        calls.append((caption, truncate))
        return torch.tensor([[len(caption)]])

    class Clip:
        def encode_text(self, text):
            return torch.full((1, 4), float(text.item()), dtype=torch.float16)

    monkeypatch.setitem(sys.modules, "clip", types.SimpleNamespace(tokenize=tokenize))
    ours = MotionMillionDataset(path, clip_model=Clip(), text_encode="clip", text_sum_way="cls")
    random.seed(0)
    np.random.seed(0)
    caption, _, _, feat, y_mask, slots = ours[0]
    assert calls == [(caption, True)]
    assert feat.dtype == torch.bfloat16 and feat.tolist() == [float(len(caption))] * 4
    assert y_mask.shape == () and slots.tolist() == [1]

    class Tokenizer:
        def __call__(self, caption, padding, truncation, return_tensors):
            assert padding and truncation and return_tensors == "pt"
            count = len(caption.split())
            return types.SimpleNamespace(input_ids=torch.arange(count)[None],
                                         attention_mask=torch.ones((1, count), dtype=torch.int64))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, input_ids, attention_mask, output_hidden_states):
            assert not output_hidden_states
            hidden = input_ids[..., None].float() * self.scale
            return types.SimpleNamespace(last_hidden_state=hidden.expand(-1, -1, 3))

    t5 = MotionMillionDataset(path, clip_model=(Tokenizer(), Encoder()), text_encode="flan-t5-xl")
    random.seed(0)
    np.random.seed(0)
    caption, _, _, feat, y_mask, slots = t5[0]
    assert slots.tolist() == [len(caption.split())] and y_mask.shape == (slots.item(),)
    assert not feat.requires_grad                        # encoded under no_grad on CPU
    with pytest.raises(LoaderError, match="text encoder"):
        MotionMillionDataset(path, text_encode="bert")


def test_blank_only_captions_and_wrong_codebooks_are_refused(tmp_path):
    path = tmp_path / "codes.zarr"
    with TokenStore.create(path, CODEBOOK, meta={"legacy_code_dtype": "int32"}) as store:
        store.append(["a", "b"], [np.arange(5), np.arange(6)], [["\n", "  \n"], ["walks\n"]])
        store.commit()
    dataset = MotionMillionDataset(path, text_encoder=t5_like)
    assert len(dataset) == 2
    with pytest.raises(LoaderError, match="blank"):
        dataset[0]
    assert dataset[1][0] == "walks"
    with pytest.raises(LoaderError, match="codebook_size"):
        MotionMillionDataset(path, text_encoder=t5_like, codebook_size=65536)
    with pytest.raises(LoaderError, match="text_sum_way"):
        MotionMillionDataset(path, text_encoder=t5_like, text_sum_way="max")


def test_motionmillion_loader_is_motionmillions_dataloader(tmp_path):
    path, _, _ = make_store(tmp_path)
    loader = motionmillion_loader(path, 4, text_encoder=clip_like, text_sum_way="cls",
                          codebook_size=CODEBOOK, max_motion_length=400)
    assert loader.drop_last and loader.batch_size == 4
    batch = next(iter(loader))
    assert batch[1].shape == (4, 400) and batch[5].tolist() == [[1]] * 4
