"""Attacks on the issue-13 refactor: inputs that the code before it accepted must still be
accepted the same way (the model flags moved to argparse)."""
from __future__ import annotations

import pytest

from vqvae import VQVAEConfig
from vqvae.config import VQVAEError


@pytest.mark.parametrize("flag", ["--dilation-growth_rate", "--dilation_growth-rate",
                                  "--output_emb-width", "--output-emb_width"])
def test_a_flag_spelled_with_dashes_and_underscores_mixed_is_still_accepted(flag):
    # before argparse, any mix of '-' and '_' in a flag name named the field
    config = VQVAEConfig.from_flags([f"{flag}=2"] if "dilation" in flag else
                                    ["--code-dim", "256", flag, "256"])
    if "dilation" in flag:
        assert config.dilation_growth_rate == 2
    else:
        assert config.output_emb_width == 256


def test_abbreviations_stay_refused_whatever_the_mix():
    with pytest.raises(VQVAEError, match="unknown model flag '--dilation_growth'"):
        VQVAEConfig.from_flags(["--dilation_growth", "2"])
