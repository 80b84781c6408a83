"""A drop-in for MotionMillion's training dataset (`Text2MotionDataset_motionmillion` and its
`collate_fn`), reading a store instead of unpickling all_data.pkl in every process.

Items are the original's tuple `(caption, m_tokens, m_tokens_len, feat, y_mask, text_tokens_len)`,
made by the same calls to Python's and numpy's global random generators in the same order, so
that under the same seeds they equal the original's on the store's exported pickle:
`random.choice` over the code rows (the single (1, T') row), `random.choice` over the stripped,
non-blank captions, the text encoder, `np.random.choice([False, False, True])` and, when True,
`np.random.choice([True, False])` (True drops the last code, False the first). Rows are
MotionMillion's: `[pad] * text_tokens_len + codes + [end] + [pad] * (301 - text_tokens_len - 1 -
len)`, without trailing pads when full (see tokstore.torch.collate_codes for the batched form).
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .torch import LoaderError, _PerProcess, plain_captions, split_indices

MAX_MOTION_LENGTH = 301   # MotionMillion's max_motion_length (its LLaMA's block size)
MAX_TEXT_LENGTH = 150
TEXT_SUM_WAYS = (None, "cls", "mean", "sum")

# a text encoder: caption -> (features (1, L, D), mask (1, L)), as MotionMillion computes them
TextEncoder = Callable[[str], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class ClipTextEncoder:
    """MotionMillion's `text_encode == 'clip'`: one feature per caption (needs OpenAI's `clip`)."""

    model: object
    device: str | torch.device = "cpu"

    def __call__(self, caption: str):
        import clip

        text = clip.tokenize(caption, truncate=True).to(self.device)
        feat = self.model.encode_text(text).float().unsqueeze(1)
        return feat, torch.ones((feat.shape[0], feat.shape[1])).to(self.device)


@dataclass
class T5TextEncoder:
    """MotionMillion's flan-t5 encoders: one feature per text token. `model` is its
    `clip_model` pair (tokenizer, encoder)."""

    model: tuple
    device: str | torch.device = "cpu"

    def __call__(self, caption: str):
        tokenizer, encoder = self.model
        inputs = tokenizer(caption, padding=True, truncation=True, return_tensors="pt")
        mask = inputs.attention_mask.to(device=self.device)
        args = dict(input_ids=inputs.input_ids.to(self.device), attention_mask=mask,
                    output_hidden_states=False)
        if next(encoder.parameters()).device.type == "cpu":
            with torch.no_grad():
                return encoder(**args).last_hidden_state, mask
        return encoder(**args).last_hidden_state, mask


def text_encoder_for(text_encode: str, clip_model, device) -> TextEncoder:
    """The encoder MotionMillion's `text_encode` names, around its `clip_model`."""
    if text_encode == "clip":
        return ClipTextEncoder(clip_model, device)
    if text_encode in ("flan-t5-xxl", "flan-t5-xl"):
        return T5TextEncoder(clip_model, device)
    raise LoaderError(f"unknown text encoder {text_encode!r}: 'clip', 'flan-t5-xxl', "
                      f"'flan-t5-xl', or pass text_encoder=")


def summed(feat: torch.Tensor, y_mask: torch.Tensor, text_sum_way: str | None) -> torch.Tensor:
    """MotionMillion's text_sum_way on bfloat16 features: None keeps one slot per token."""
    if text_sum_way == "cls":
        return feat[:, 0, :].unsqueeze(1)
    if text_sum_way == "mean":
        return ((feat * y_mask.unsqueeze(-1)).sum(dim=1) / y_mask.sum(dim=1, keepdim=True)) \
            .unsqueeze(1)
    if text_sum_way == "sum":
        return (feat * y_mask.unsqueeze(-1)).sum(dim=1).unsqueeze(1)
    return feat


def motionmillion_row(codes: torch.Tensor, text_tokens_len: int, end: int, pad: int,
                      max_motion_length: int = MAX_MOTION_LENGTH) -> torch.Tensor:
    """One row as the original builds it: int32 pads and end token around the codes (so the row
    has the codes' dtype promoted with int32), padded to max_motion_length when it fits, else
    left longer (the original does not crop)."""
    def filled(count, value):
        return torch.full((count,), value, dtype=torch.int32, device=codes.device)

    pieces = [filled(text_tokens_len, pad), codes, filled(1, end)]
    count = codes.shape[0]
    if count + 1 < max_motion_length - text_tokens_len:
        pieces.append(filled(max_motion_length - text_tokens_len - 1 - count, pad))
    return torch.cat(pieces)


class MotionMillionDataset(Dataset):
    """`Text2MotionDataset_motionmillion` over a store. Arguments as the original's that matter:
    `split` (a split file, e.g. `<root>/split/<version>/train.txt`; None: the whole store in
    store order), `clip_model`, `text_encode` and `comp_device` (or any `text_encoder` callable:
    caption -> (features (1, L, D), mask (1, L))), `text_sum_way`, `codebook_size` (checked
    against the store's), the max lengths. Codes come in the dtype the original's pickle holds
    (the store's legacy_code_dtype: int32 FSQ, int64 codebook models), or `code_dtype`.

    Like the original: names whose caption list is empty are skipped at construction; caption
    lines blank after strip() are dropped; a name listed twice in the split is read twice but
    counted once in len() (the original's dict). A name with only blank lines stays, and
    drawing it raises LoaderError (the original's random.choice fails there).
    """

    def __init__(self, store_path: str | os.PathLike, split: str | os.PathLike | None = None,
                 clip_model=None, text_encode: str = "clip", text_sum_way: str | None = None,
                 comp_device: str | torch.device = "cpu", codebook_size: int | None = None, *,
                 text_encoder: TextEncoder | None = None,
                 max_motion_length: int = MAX_MOTION_LENGTH,
                 max_text_length: int = MAX_TEXT_LENGTH, code_dtype=None):
        from . import TokenStore
        from .legacy import legacy_dtype

        if text_sum_way not in TEXT_SUM_WAYS:
            raise LoaderError(f"text_sum_way must be one of {TEXT_SUM_WAYS}, not {text_sum_way!r}")
        self.store_path = str(store_path)
        self.text_encoder = text_encoder or text_encoder_for(text_encode, clip_model, comp_device)
        self.text_sum_way, self.comp_device = text_sum_way, comp_device
        self.max_motion_length, self.max_text_length = max_motion_length, max_text_length
        self._local = _PerProcess()
        with TokenStore.open(self.store_path) as store:
            if codebook_size is not None and codebook_size != store.codebook_size:
                raise LoaderError(f"codebook_size {codebook_size} is not the store's "
                                  f"({store.codebook_size}): {store.path}")
            self.mot_end_idx, self.mot_pad_idx = store.end_token, store.pad_token
            self.code_dtype = self._code_dtype(code_dtype, store.pad_token) \
                if code_dtype is not None else legacy_dtype(store)
            listed = np.arange(len(store), dtype=np.int64) if split is None else \
                split_indices(store, split)
            keep = store.batch(listed).line_counts > 0 if len(listed) else np.zeros(0, bool)
        self._index_list = listed[keep]
        self._unique = len(np.unique(self._index_list))

    @staticmethod
    def _code_dtype(code_dtype, pad_token: int) -> np.dtype:
        """A signed integer dtype that holds every token (the rows promote it with int32 pads):
        int16 would wrap a 64K codebook's codes silently."""
        try:
            dtype = np.dtype(code_dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind != "i" or np.iinfo(dtype).max < pad_token:
            raise LoaderError(f"code_dtype {code_dtype!r} cannot hold the store's tokens (up to "
                              f"the pad token {pad_token}): int32 or int64, as the original's "
                              f"pickle")
        return dtype

    def _store(self):
        local = self._local.for_this_process()
        if not local:
            from . import TokenStore

            local["store"] = TokenStore.open(self.store_path)
        return local["store"]

    def __len__(self) -> int:
        return self._unique

    def __getitem__(self, item: int):
        store, device = self._store(), self.comp_device
        sample = store[int(self._index_list[item])]
        rows = sample.codes.astype(self.code_dtype)[None, :]   # the pickle's (1, T') array
        m_tokens = torch.tensor(random.choice(rows)).to(device)
        captions = plain_captions(sample.texts)
        if not captions:
            raise LoaderError(f"{store.path}: sample {sample.name!r} has only blank caption "
                              f"lines (MotionMillion's loader fails on it too)")
        caption = random.choice(captions)
        feat, y_mask = self.text_encoder(caption)
        feat = summed(feat.to(dtype=torch.bfloat16), y_mask, self.text_sum_way)
        if np.random.choice([False, False, True]):
            m_tokens = m_tokens[:-1] if np.random.choice([True, False]) else m_tokens[1:]
        m_tokens_len = m_tokens.shape[0]
        text_tokens_len = feat.shape[1]
        if text_tokens_len > self.max_text_length:
            feat, y_mask = feat[:, :self.max_text_length, :], y_mask[:, :self.max_text_length]
            text_tokens_len = self.max_text_length
        row = motionmillion_row(m_tokens, text_tokens_len, self.mot_end_idx, self.mot_pad_idx,
                                self.max_motion_length)
        return (caption, row.reshape(-1), torch.tensor(m_tokens_len).to(device), feat.squeeze(),
                y_mask.squeeze(), torch.tensor(text_tokens_len).unsqueeze(0).to(device))


def pad_stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors of one rank stacked, zero-padded at the end of every dimension to the largest.
    Each is added onto the zeros, as the original does, so that -0.0 comes out +0.0 there too."""
    size = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = tensors[0].new_zeros((len(tensors), *size))
    for k, t in enumerate(tensors):
        out[(k, *(slice(0, n) for n in t.shape))] += t
    return out


def collate_fn(batch):
    """MotionMillion's collate: captions as a list; tokens, code lengths and text lengths
    stacked; text features and masks zero-padded to the longest."""
    captions, tokens, lengths, feats, masks, text_lengths = zip(*batch)
    return (list(captions), torch.stack(tokens), torch.stack(lengths), pad_stack(feats),
            pad_stack(masks), torch.stack(text_lengths))


def motionmillion_loader(store_path, batch_size: int, split=None, clip_model=None,
                 text_encode: str = "clip", text_sum_way: str | None = None, comp_device="cpu",
                 codebook_size: int | None = None, num_workers: int = 0,
                 **dataset_args) -> DataLoader:
    """MotionMillion's `DATALoader` over a store: shuffled, drop_last, its collate."""
    dataset = MotionMillionDataset(store_path, split, clip_model, text_encode, text_sum_way,
                                   comp_device, codebook_size, **dataset_args)
    return DataLoader(dataset, batch_size, shuffle=True, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=True)
