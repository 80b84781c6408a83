"""VQVAEConfig: the original flag names, presets, FSQ tables, JSON round trip."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import GOLDEN, golden_info
from vqvae import VQVAEConfig, VQVAEError
from vqvae.config import flag_values

DOCUMENTED_FSQ_SIZES = {256: 240, 512: 512, 1024: 1000, 2048: 1920, 4096: 4375, 16384: 15360, 65536: 64000}


def golden_flag_strings() -> dict[str, str]:
    """folder -> the flags of ../shared/golden/README.md's table, with its quantizer column."""
    rows = re.findall(r"^\| (\w+) \| (\w+) \| `([^`]+)`", (GOLDEN / "README.md").read_text(), re.M)
    assert {name for name, _, _ in rows} == {"fsq64000", "ema512"}
    return {name: f"{flags} --quantizer {quantizer}" for name, quantizer, flags in rows}


@pytest.mark.parametrize("nb_code, size", sorted(DOCUMENTED_FSQ_SIZES.items()))
def test_every_fsq_table_gives_the_documented_codebook_size(nb_code, size):
    config = VQVAEConfig(quantizer="FSQ", nb_code=nb_code)
    assert config.codebook_size == size
    assert config.code_dtype == np.int32


@pytest.mark.parametrize("nb_code", [1000, 8192, 64000])
def test_an_unsupported_fsq_nb_code_is_a_clear_error(nb_code):
    with pytest.raises(VQVAEError, match=f"FSQ does not support nb_code {nb_code}"):
        VQVAEConfig(quantizer="FSQ", nb_code=nb_code)


def test_codebook_quantizers_use_nb_code_and_int64():
    config = VQVAEConfig(quantizer="ema_reset", nb_code=1000)
    assert (config.codebook_size, config.code_dtype) == (1000, np.int64)


def test_from_flags_parses_the_golden_flag_strings():
    for name, flags in golden_flag_strings().items():
        config = VQVAEConfig.from_flags(flags)
        assert config.to_dict() == {**golden_info(name)["config"], "input_dim": 272}, name


def test_from_flags_accepts_both_spellings_equals_signs_and_a_list():
    a = VQVAEConfig.from_flags(["--nb-code", "1024", "--quantizer", "FSQ", "--vq_norm", "None",
                                "--use-patcher", "--patch-method=rearrange", "--down_t=1"])
    b = VQVAEConfig.from_flags("--nb_code 1024 --quantizer=FSQ --use_patcher --patch_method rearrange --down-t 1")
    assert a == b
    assert (a.nb_code, a.vq_norm, a.use_patcher, a.patch_method, a.unit_length) == (1024, None, True, "rearrange", 2)


@pytest.mark.parametrize("flags, message", [
    ("--nb-code 512 --batch-size 1", "unknown model flag '--batch-size'"),
    ("--nb-code", "model flag --nb-code: expected one argument"),
    ("--width wide", "model flag --width: expects an integer, got 'wide'"),
    ("--width=wide", "model flag --width: expects an integer, got 'wide'"),
    ("--nb_code=", "model flag --nb-code: expects an integer, got ''"),
    ("--use_patcher=1", "model flag --use_patcher: ignored explicit argument '1'"),
    ("--batch-size=1", "unknown model flag '--batch-size'"),
    ("--nb 512", "unknown model flag '--nb'"),  # no abbreviations
    ("-h", "unknown model flag '-h'"),  # no help that would exit the process
    ("512", "expected a flag, got '512'"),
    ("--vq-act tanh", "vq_act must be one of"),
    ("--vq-norm IN", "vq_norm must be one of"),
    ("--stride-t 3", "stride_t must be 2"),
    ("--patch_size 2", "patch_size must be 1"),
    ("--kernel-size 4", "kernel_size must be odd"),
    ("--code-dim 256", r"output_emb_width \(512\) must equal code_dim \(256\)"),
])
def test_bad_flags_are_clear_errors(flags, message):
    with pytest.raises(VQVAEError, match=message):
        VQVAEConfig.from_flags(flags)


def test_a_repeated_flag_takes_the_last_value_as_argparse_does():
    assert VQVAEConfig.from_flags("--width 64 --width=128").width == 128


def test_flag_values_holds_only_the_fields_the_flags_give():
    assert flag_values("--nb_code 1024 --use-patcher --vq-norm=LN") == {
        "nb_code": 1024, "use_patcher": True, "vq_norm": "LN"}
    assert flag_values([]) == {}


def test_bad_flags_never_exit_the_process():
    for flags in ("--nb-code", "--width x", "--use_patcher=1", "--", "-h", "--help", "x"):
        with pytest.raises(VQVAEError):
            VQVAEConfig.from_flags(flags)


def test_defaults_are_the_original_get_codes_parser_defaults():
    config = VQVAEConfig.from_flags([])
    assert (config.quantizer, config.nb_code, config.down_t, config.width, config.vq_norm) == (
        "ema_reset", 512, 3, 512, None)


@pytest.mark.parametrize("name", ["motionmillion", "t2m-gpt"])
def test_dict_and_flags_round_trip(name):
    config = VQVAEConfig.preset(name)
    assert VQVAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert VQVAEConfig.from_flags(config.to_flags()) == config


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(VQVAEError, match="unknown config fields: \\['nb_codes'\\]"):
        VQVAEConfig.from_dict({"nb_codes": 512})


def test_presets():
    mm = VQVAEConfig.preset("motionmillion")
    assert (mm.quantizer, mm.nb_code, mm.codebook_size, mm.down_t, mm.unit_length, mm.vq_norm,
            mm.use_patcher, mm.input_dim, mm.width) == ("FSQ", 65536, 64000, 1, 2, "LN", True, 272, 512)
    t2m = VQVAEConfig.preset("t2m-gpt")
    assert (t2m.quantizer, t2m.nb_code, t2m.code_dim, t2m.down_t, t2m.depth, t2m.dilation_growth_rate,
            t2m.vq_act, t2m.vq_norm, t2m.input_dim, t2m.unit_length) == (
        "ema_reset", 512, 512, 2, 3, 3, "relu", None, 263, 4)
    assert VQVAEConfig.preset("motionmillion", width=128).width == 128
    with pytest.raises(VQVAEError, match="unknown preset 'humanml'"):
        VQVAEConfig.preset("humanml")
