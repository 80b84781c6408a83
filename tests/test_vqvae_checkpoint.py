"""load_checkpoint: file formats, strict loading, and errors that name the differing flag."""
from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import GOLDEN, golden_info
from vqvae import CheckpointMismatchError, VQVAEConfig, VQVAEError, file_sha256, load_checkpoint

FSQ_CKPT = GOLDEN / "fsq64000" / "checkpoint.pth"
EMA_CKPT = GOLDEN / "ema512" / "checkpoint.pth"


def golden_config(name: str, **overrides) -> VQVAEConfig:
    return VQVAEConfig.from_dict({**golden_info(name)["config"], "input_dim": 272, **overrides})


class NotATensor:  # pickled by reference: weights_only must refuse it
    pass


def test_loads_eval_mode_without_gradients_and_strips_module_prefix():
    model = load_checkpoint(FSQ_CKPT, golden_config("fsq64000"), device="cpu")
    raw = torch.load(FSQ_CKPT, weights_only=True)["net"]
    assert all(k.startswith("module.") for k in raw)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw["module." + key]), key


def test_a_bare_state_dict_without_prefix_loads_the_same_weights(tmp_path):
    raw = torch.load(EMA_CKPT, weights_only=True)["net"]
    path = tmp_path / "bare.pth"
    torch.save({k.removeprefix("module."): v for k, v in raw.items()}, path)
    bare = load_checkpoint(path, golden_config("ema512"))
    wrapped = load_checkpoint(EMA_CKPT, golden_config("ema512"))
    x = torch.randn(2, 16, 272)
    assert torch.equal(bare.encode(x), wrapped.encode(x))


def test_wrong_width_names_the_width_flag():
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(FSQ_CKPT, golden_config("fsq64000", width=256))
    assert err.value.likely_flags == {"width": (256, 128)}
    message = str(err.value)
    assert "most likely differing flags: --width (config 256, checkpoint 128)" in message
    assert "vqvae.encoder.model.1.weight" in err.value.wrong_shape
    assert f"wrong-shape keys ({len(err.value.wrong_shape)}): " in message
    assert "vqvae.decoder.model.0.weight checkpoint (128, 128, 3) vs model (256, 128, 3)" in message
    assert "more)" in message  # the long key list is abbreviated
    assert "\n" not in message  # one line for the CLI


def test_wrong_quantizer_names_the_quantizer_flag():
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(EMA_CKPT, golden_config("ema512", quantizer="FSQ"))
    assert err.value.likely_flags["quantizer"] == ("FSQ", "ema_reset, ema or reset")
    assert "--quantizer (config 'FSQ', checkpoint 'ema_reset, ema or reset')" in str(err.value)
    assert err.value.missing == ["vqvae.quantizer.project_in.bias", "vqvae.quantizer.project_in.weight",
                                 "vqvae.quantizer.project_out.bias", "vqvae.quantizer.project_out.weight"]
    assert err.value.unexpected == ["vqvae.quantizer.codebook"]

    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(FSQ_CKPT, golden_config("fsq64000", quantizer="orig", nb_code=512))
    assert err.value.likely_flags["quantizer"] == ("orig", "FSQ")
    assert err.value.likely_flags["nb_code"] == (512, "65536")


@pytest.mark.parametrize("override, flag, expected", [
    ({"depth": 2}, "depth", (2, 3)),
    ({"down_t": 2}, "down_t", (2, 1)),
    ({"kernel_size": 5}, "kernel_size", (5, 3)),
    ({"use_patcher": False}, "use_patcher", (False, True)),
    ({"input_dim": 263}, "input_dim", (263, 272)),
    ({"vq_norm": None}, "vq_norm", (None, "LN or GN")),
    ({"vq_norm": "BN"}, "vq_norm", ("BN", "LN or GN")),
    ({"code_dim": 64, "output_emb_width": 64}, "code_dim", (64, 128)),
    ({"nb_code": 1024}, "nb_code", (1024, "65536")),
])
def test_other_flags_are_read_off_the_shapes(override, flag, expected):
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(FSQ_CKPT, golden_config("fsq64000", **override))
    assert err.value.likely_flags[flag] == expected
    assert set(err.value.likely_flags) <= {flag, "output_emb_width"}


def test_codebook_quantizer_variants_share_the_codebook_key():
    """ema and reset store `codebook` like ema_reset (and quantize the same way)."""
    x = torch.randn(1, 32, 272)
    codes = {kind: load_checkpoint(EMA_CKPT, golden_config("ema512", quantizer=kind)).encode(x)
             for kind in ("ema_reset", "ema", "reset")}
    assert torch.equal(codes["ema"], codes["ema_reset"]) and torch.equal(codes["reset"], codes["ema_reset"])


def test_files_that_are_not_checkpoints_are_clear_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(VQVAEError, match="cannot load .*notes.pth as a torch checkpoint with weights_only=True"):
        load_checkpoint(text, golden_config("ema512"))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net": {}, "extra": NotATensor()}, unsafe)
    with pytest.raises(VQVAEError, match="weights_only=True"):
        load_checkpoint(unsafe, golden_config("ema512"))

    no_weights = tmp_path / "meta.pth"
    torch.save({"nb_iter": 3}, no_weights)
    with pytest.raises(VQVAEError, match="holds no state dict of tensors"):
        load_checkpoint(no_weights, golden_config("ema512"))

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pth", golden_config("ema512"))


def test_file_sha256_streams_the_whole_file(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    assert file_sha256(FSQ_CKPT) == hashlib.sha256(FSQ_CKPT.read_bytes()).hexdigest()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-tar"])
def test_a_damaged_checkpoint_loads_or_is_a_vqvae_error(tmp_path, zip_format):
    """torch.load raises a dozen exception types on damaged files; read_state_dict catches only
    those (vqvae.checkpoint.TORCH_LOAD_ERRORS), so every damaged copy must fall among them."""
    from file_mutations import damaged_copies, outcomes_of

    from vqvae.checkpoint import read_state_dict

    saved = tmp_path / "good.pth"
    torch.save({"net": {"module.a": torch.zeros(3), "b": torch.ones(2, 4, dtype=torch.int64)[:, 1:]},
                "nb_iter": 3}, saved, _use_new_zipfile_serialization=zip_format)
    copies = damaged_copies(saved.read_bytes(), 400, seed=1)
    outcomes = outcomes_of(read_state_dict, tmp_path / "damaged.pth", copies, VQVAEError)
    assert outcomes == {"read", "refused"}  # both happen: the damage is neither nil nor total
