"""The benchmark harness on the model-family presets: timm baseline modules that compute what vit_fast computes
(where timm imports), and the HF baseline's clear refusal for families (it builds the classic ViT only)."""
import pytest
import torch

import vit_fast
from benchmarks.convert import Unsupported, to_hf, to_timm
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

FAMILY_PRESETS = ["clip_b_16", "dinov2_s_14", "dinov2_b_14_reg4", "dinov2_g_14", "siglip_b_16",
                  "deit_ti_16_distilled"]


def _tiny(name):
    return randomize_(vit_fast.create(name, backend="sdpa", depth=1, img_size=28 if "_14" in name else 32))


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_timm_baseline_matches(name):
    pytest.importorskip("timm")
    model = _tiny(name)
    x = torch.randn(2, 3, *model.config.img_size)
    with torch.no_grad():
        assert rel_err(to_timm(model)(x), model(x)) <= LOADER_REL_ERR


def test_hf_baseline_refuses_families():
    with pytest.raises(Unsupported, match=r"the HF baseline row is built for the classic ViT only; this model sets "
                                          r"\['pre_norm', 'patch_bias', 'act_layer', 'head_bias'\]"):
        to_hf(_tiny("clip_b_16"))


def test_harness_accepts_family_presets():
    from benchmarks.cli import add_arguments, resolve
    import argparse

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--models", "clip_l_14,dinov2_b_14", "--device", "cpu"])
    assert resolve(args).models == ["clip_l_14", "dinov2_b_14"]
