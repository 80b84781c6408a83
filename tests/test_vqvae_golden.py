"""vqvae against the golden outputs of the original implementation (../shared/golden)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqvae import VQVAEConfig, load_checkpoint, normalize


def golden_model(path, info):
    config = VQVAEConfig.from_dict({**info["config"], "input_dim": 272})
    return load_checkpoint(path / "checkpoint.pth", config)


def golden_motions(path, info, model):
    """name -> normalized float32 motion, cropped at start 0 to a multiple of the unit length."""
    dataset = path / "dataset"
    mean = np.load(dataset / "mean_std/vector_272/mean.npy")
    std = np.load(dataset / "mean_std/vector_272/std.npy")
    motions = {}
    for name in info["names"]:
        motion = np.load(dataset / "motion_data/vector_272" / f"{name}.npy")
        frames = len(motion) // model.unit_length * model.unit_length
        motions[name] = normalize(motion[:frames], mean, std)
    return motions


@pytest.fixture
def loaded(golden):
    path, info = golden
    model = golden_model(path, info)
    return path, info, model, golden_motions(path, info, model)


def test_every_motion_encodes_to_the_original_codes(loaded):
    path, info, model, motions = loaded
    total = 0
    for name, x in motions.items():
        codes = model.encode(torch.from_numpy(x)[None]).numpy()
        expected = np.load(path / "expected/codes" / f"{name}.npy")
        assert codes.dtype == expected.dtype == np.dtype(info["code_dtype"]), name
        assert codes.shape == expected.shape == (1, len(x) // model.unit_length), name
        np.testing.assert_array_equal(codes, expected, err_msg=name)
        total += codes.size
    assert total == info["total_tokens"] - len(motions)  # info counts one end token per motion


def test_decoding_the_first_motion_matches_the_original(loaded):
    path, info, model, _ = loaded
    codes = np.load(path / "expected/codes" / f"{info['names'][0]}.npy")
    decoded = model.decode(torch.from_numpy(codes)).numpy()
    expected = np.load(path / "expected/decoded_first.npy")
    assert decoded.shape == expected.shape and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-5)


def test_an_equal_length_batch_encodes_like_one_at_a_time(loaded):
    _, _, model, motions = loaded
    frames = min(len(x) for x in motions.values())
    batch = torch.from_numpy(np.stack([x[:frames] for x in motions.values()]))
    together = model.encode(batch)
    one_by_one = torch.cat([model.encode(row[None]) for row in batch])
    assert together.shape == (len(motions), frames // model.unit_length)
    assert torch.equal(together, one_by_one)


def test_state_dict_keys_are_the_originals(loaded):
    _, info, model, _ = loaded
    assert sorted(model.state_dict()) == sorted(info["state_dict_keys"])


def test_model_reports_the_real_codebook_and_special_tokens(loaded):
    _, info, model, _ = loaded
    assert model.codebook_size == info["codebook_size"]
    assert (model.end_token, model.pad_token) == (info["codebook_size"], info["codebook_size"] + 1)
    assert model.unit_length == info["unit_length"]
    assert model.code_dtype == np.dtype(info["code_dtype"])
