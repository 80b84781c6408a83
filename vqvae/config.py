"""The tokenizer's configuration, spelled with the original command-line flag names.

A MotionMillion / T2M-GPT checkpoint does not store its config: the original scripts pass it as
flags. `VQVAEConfig.from_flags` accepts those flags verbatim so they can be pasted from a
get-codes script; the field defaults are the defaults of the original get-codes parser.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import shlex
from dataclasses import dataclass

import numpy as np


class VQVAEError(ValueError):
    """Bad tokenizer input: an unusable config, checkpoint, motion or code array."""


# FSQ level tables by --nb-code, as the original hard-codes them. The real codebook size is
# the product of the levels (65536 -> 64000), and everything downstream follows the real size.
FSQ_LEVELS = {
    256: (8, 6, 5),
    512: (8, 8, 8),
    1024: (8, 5, 5, 5),
    2048: (8, 8, 6, 5),
    4096: (7, 5, 5, 5, 5),
    16384: (8, 8, 8, 6, 5),
    65536: (8, 8, 8, 5, 5, 5),
}
CODEBOOK_QUANTIZERS = ("ema_reset", "ema", "reset", "orig")
QUANTIZERS = ("FSQ",) + CODEBOOK_QUANTIZERS
ACTIVATIONS = ("relu", "silu", "gelu")
NORMS = (None, "LN", "GN", "BN")
PATCH_METHODS = ("haar", "rearrange")


@dataclass
class VQVAEConfig:
    nb_code: int = 512
    code_dim: int = 512
    output_emb_width: int = 512
    down_t: int = 3
    stride_t: int = 2
    width: int = 512
    depth: int = 3
    dilation_growth_rate: int = 3
    vq_act: str = "relu"
    vq_norm: str | None = None
    kernel_size: int = 3
    quantizer: str = "ema_reset"
    use_patcher: bool = False
    patch_size: int = 1
    patch_method: str = "haar"
    input_dim: int = 272  # not a flag in the original: it follows --dataname (272 for vector_272)

    def __post_init__(self):
        if self.vq_norm == "None":  # what `--vq-norm None` gives the original's argparse
            self.vq_norm = None
        for name, choices in (("quantizer", QUANTIZERS), ("vq_act", ACTIVATIONS),
                              ("vq_norm", NORMS), ("patch_method", PATCH_METHODS)):
            if getattr(self, name) not in choices:
                raise VQVAEError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("nb_code", "code_dim", "output_emb_width", "width", "depth",
                     "dilation_growth_rate", "kernel_size", "input_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VQVAEError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.down_t, bool) or not isinstance(self.down_t, int) or self.down_t < 0:
            raise VQVAEError(f"down_t must be a non-negative integer, got {self.down_t!r}")
        if self.kernel_size % 2 == 0:
            raise VQVAEError(f"kernel_size must be odd (the convolutions keep the length), got {self.kernel_size}")
        # The original decoder always upsamples by 2, and its encoder's first convolution takes
        # input_dim channels whatever the patcher emits: other values cannot have been trained.
        if self.stride_t != 2:
            raise VQVAEError(f"stride_t must be 2 (the original decoder upsamples by 2), got {self.stride_t!r}")
        if self.patch_size != 1:
            raise VQVAEError(f"patch_size must be 1 (the original encoder only runs with 1), got {self.patch_size!r}")
        if self.output_emb_width != self.code_dim:  # the quantizer takes the encoder's output
            raise VQVAEError(f"output_emb_width ({self.output_emb_width}) must equal code_dim ({self.code_dim})")
        if self.quantizer == "FSQ":
            self.fsq_levels  # noqa: B018 - raises on an unsupported nb_code

    # ---- derived facts -------------------------------------------------------------------
    @property
    def unit_length(self) -> int:
        """Frames per code: each of the down_t levels halves the time axis."""
        return 2 ** self.down_t

    @property
    def fsq_levels(self) -> tuple[int, ...]:
        if self.quantizer != "FSQ":
            raise VQVAEError(f"quantizer {self.quantizer!r} has no FSQ levels")
        if self.nb_code not in FSQ_LEVELS:
            raise VQVAEError(f"FSQ does not support nb_code {self.nb_code}; "
                             f"the original supports {sorted(FSQ_LEVELS)}")
        return FSQ_LEVELS[self.nb_code]

    @property
    def codebook_size(self) -> int:
        """The real number of codes (64000 for FSQ nb_code 65536); end token = size, pad = size + 1."""
        return math.prod(self.fsq_levels) if self.quantizer == "FSQ" else self.nb_code

    @property
    def code_dtype(self) -> np.dtype:
        """The dtype of the original's code files: int32 for FSQ, int64 for codebook quantizers."""
        return np.dtype(np.int32 if self.quantizer == "FSQ" else np.int64)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> VQVAEConfig:
        """A named config ("motionmillion", "t2m-gpt"), optionally with fields replaced."""
        if name not in PRESETS:
            raise VQVAEError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_flags(cls, flags: list[str] | str) -> VQVAEConfig:
        """Parse the original command-line flags (`--nb-code 65536 --use_patcher ...`): the flags
        given over the original get-codes parser's defaults. See `flag_values`."""
        return cls(**flag_values(flags))

    def to_dict(self) -> dict:
        """A JSON-safe dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VQVAEConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise VQVAEError(f"unknown config fields: {sorted(unknown)}")
        return cls(**data)

    def to_flags(self) -> list[str]:
        """The original flags that reproduce this config (plus tokstore's --input-dim)."""
        flags: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "use_patcher":
                flags += ["--use_patcher"] if value else []
            else:
                flags += [flag_name(f.name), str(value)]
        return flags


_UNDERSCORE_FLAGS = {"use_patcher", "patch_size", "patch_method"}  # the original spells these with _


def flag_name(field: str) -> str:
    """The original's spelling of a field's flag (`--nb-code`, `--use_patcher`)."""
    return "--" + (field if field in _UNDERSCORE_FLAGS else field.replace("_", "-"))


def flag_values(flags: list[str] | str) -> dict:
    """The fields that the original command-line flags set, {field: value}, nothing else.

    An argparse parser like the original's: one flag per VQVAEConfig field, under its original
    spelling and the others (`--x-y`, `--x_y` and mixes such as `--x-y_z` work), `--flag value`
    or `--flag=value`, `--use_patcher` a store_true, the last of a repeated flag winning; `--input-dim` is tokstore's
    addition (the original derives it from --dataname). Abbreviated flags are refused rather than
    guessed. Values are checked when a VQVAEConfig is made of them. Raises VQVAEError.
    """
    tokens = shlex.split(flags) if isinstance(flags, str) else list(flags)
    parser = _FlagParser(prog="model flags", add_help=False, allow_abbrev=False,
                         exit_on_error=False)
    for f in dataclasses.fields(VQVAEConfig):
        spellings = dict.fromkeys([flag_name(f.name)] + _mixed_spellings(f.name))
        if f.type == "bool":
            parser.add_argument(*spellings, dest=f.name, action="store_true", default=argparse.SUPPRESS)
        else:
            parser.add_argument(*spellings, dest=f.name, default=argparse.SUPPRESS,
                                type=_integer if f.type == "int" else str)
    try:
        given, rest = parser.parse_known_args(tokens)
    except argparse.ArgumentError as exc:  # argument_name: the flag's spellings, "/"-joined
        where = f"model flag {exc.argument_name.partition('/')[0]}" if exc.argument_name \
            else "model flags"
        raise VQVAEError(f"{where}: {exc.message}") from None
    if rest:
        spelled = rest[0].partition("=")[0]
        if not spelled.startswith("-"):
            raise VQVAEError(f"expected a flag, got {rest[0]!r}")
        raise VQVAEError(f"unknown model flag {spelled!r}; model flags are: "
                         + " ".join(flag_name(f.name) for f in dataclasses.fields(VQVAEConfig)))
    return vars(given)


def _mixed_spellings(field: str) -> list[str]:
    """Every `--` spelling of a field with each separator '-' or '_' (`--dilation-growth_rate`
    too, as the parser before argparse took any mix)."""
    words = field.split("_")
    return ["--" + words[0] + "".join(sep + word for sep, word in zip(seps, words[1:]))
            for seps in itertools.product("_-", repeat=len(words) - 1)]


class _FlagParser(argparse.ArgumentParser):
    """argparse that raises VQVAEError where it would print usage and exit the process: with
    exit_on_error=False most errors arrive as ArgumentError, but argparse still sends a few
    through error() (missing required arguments, for one), and a library must not exit."""

    def error(self, message: str):
        raise VQVAEError(f"model flags: {message}")


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects an integer, got {raw!r}") from None


PRESETS = {
    # scripts/train/train_t2m_get_codes.sh of MotionMillion: the production FSQ tokenizer.
    "motionmillion": VQVAEConfig(
        nb_code=65536, code_dim=512, output_emb_width=512, down_t=1, stride_t=2, width=512,
        depth=3, dilation_growth_rate=3, vq_act="relu", vq_norm="LN", kernel_size=3,
        quantizer="FSQ", use_patcher=True, patch_size=1, patch_method="haar", input_dim=272),
    # T2M-GPT's HumanML3D tokenizer.
    "t2m-gpt": VQVAEConfig(
        nb_code=512, code_dim=512, output_emb_width=512, down_t=2, stride_t=2, width=512,
        depth=3, dilation_growth_rate=3, vq_act="relu", vq_norm=None, kernel_size=3,
        quantizer="ema_reset", use_patcher=False, patch_size=1, patch_method="haar", input_dim=263),
}
