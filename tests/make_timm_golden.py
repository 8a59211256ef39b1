"""Regenerate tests/data/timm_golden/: outputs of real timm ViTs, so CI checks timm compatibility without timm.

timm cannot be installed in the project venv on the CPU-only machines (torchvision has no CPU build there), so
this script runs once, by hand, in a separate venv holding PyPI's default torch + torchvision + timm:

    python3 -m venv /tmp/timm-venv && /tmp/timm-venv/bin/pip install torch torchvision timm safetensors numpy
    /tmp/timm-venv/bin/python tests/make_timm_golden.py              # classic ViT cases
    /tmp/timm-venv/bin/python tests/make_timm_golden.py --families   # CLIP, DINOv2 (+reg, SwiGLU), SigLIP, DeiT

It builds tiny `timm.models.vision_transformer.VisionTransformer`s, re-initializes every parameter from a fixed
seed with large values (LayerNorm weights 1 + 0.5 N(0,1), biases, pos_embed and cls_token 0.5 N(0,1)) so any
mistake shows, and writes:
  <case>.safetensors  the timm state_dict, exact timm key names, fp32 (some files serve several cases);
  golden.safetensors  per case `<case>.input` (B,3,H,W) and the expected fp32 `<case>.logits` (model(x)),
                      `<case>.features` (forward_features(x)) and `<case>.pre_logits` (forward_head(.., True));
  cases.json          per case: timm constructor kwargs, eval image size, output names, layer-norm eps, the
                      config overrides a loader needs beyond the state dict, and the full expected config.
Expected outputs are computed in float64 (from the fp32 weights), then stored as fp32.

timm behaviours captured (read from timm 1.0.x `models/vision_transformer.py` and `layers/pos_embed.py`):
- LayerNorm eps is 1e-6 everywhere (timm.layers.LayerNorm default); GELU is exact (erf); attention scale
  head_dim**-0.5; qkv is one Linear (3D, D) with rows [q; k; v], head-major inside each.
- forward_features = patch_embed -> (concat cls_token, add pos_embed) -> blocks -> `norm`. With
  global_pool='avg' timm sets `norm` to Identity and builds `fc_norm` instead, so forward_features of an avg
  model returns UN-normalized tokens; forward_head = pool -> fc_norm -> head. 'avg' pools the mean of the
  patch tokens only (prefix/class token excluded); 'token' takes token 0. fc_norm is Identity for 'token'.
  The state dict therefore holds `norm.*` for 'token' and `fc_norm.*` for 'avg', never both.
- num_classes=0: `head` is Identity (no head.* keys); model(x) returns the pooled (fc_normed) features.
- dynamic_img_size=True: the pos embed is resampled on every forward by `resample_abs_pos_embed`:
  prefix (class) token embedding untouched; the patch part reshaped to the TRAINING grid (img_size/patch),
  cast to fp32, `F.interpolate(mode='bicubic', antialias=True, align_corners=None i.e. False)` to the new
  grid (H/P, W/P), cast back. antialias=True changes the result even when UPsampling (the antialiased bicubic
  uses PIL's a=-0.5 kernel, the plain one a=-0.75), so a loader must resample with antialias=True. Without
  dynamic_img_size timm asserts the exact img_size.
- Nothing in a timm state dict records num_heads, layer_norm_eps, or a non-square img_size; patch size,
  embed dim, depth, mlp dim, qkv bias, num_classes, pooling (fc_norm.* present -> avg) and the class token are
  readable from key names and shapes.
"""
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

OUT = Path(__file__).resolve().parent / "data" / "timm_golden"
BATCH = 2

# name -> (weights file stem, timm kwargs, eval (H, W)). Weights files are shared by cases that evaluate one
# model at several resolutions.
CASES = {
    "a_cls_square": ("a_cls_square", dict(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=1.5, num_classes=10,
        qkv_bias=True), (32, 32)),
    "b_nonsquare_hd80": ("b_nonsquare_hd80", dict(
        img_size=(48, 32), patch_size=16, embed_dim=160, depth=1, num_heads=2, mlp_ratio=0.5, num_classes=7),
        (48, 32)),
    "c_avg_fc_norm": ("c_avg_fc_norm", dict(
        img_size=(28, 42), patch_size=14, embed_dim=32, depth=1, num_heads=1, num_classes=5, qkv_bias=False,
        global_pool="avg"), (28, 42)),
    "d_dynamic_up": ("d_dynamic", dict(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=1, num_classes=6, dynamic_img_size=True),
        (48, 40)),
    "d_dynamic_down": ("d_dynamic", None, (24, 16)),
    "e_no_head_hd96": ("e_no_head_hd96", dict(
        img_size=(16, 24), patch_size=4, embed_dim=96, depth=1, num_heads=1, mlp_ratio=1.0, num_classes=0),
        (16, 24)),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace timm's small init with large seeded values so wrong wiring changes the outputs visibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
        model.cls_token.copy_(0.5 * torch.randn(model.cls_token.shape, generator=g))
        model.pos_embed.copy_(0.5 * torch.randn(model.pos_embed.shape, generator=g))


def vit_fast_config(model: VisionTransformer) -> dict:
    """The vit-fast ViTConfig fields this timm model corresponds to."""
    return dict(
        img_size=list(model.patch_embed.img_size),
        patch_size=model.patch_embed.patch_size[0],
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        mlp_dim=model.blocks[0].mlp.fc1.out_features,
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        layer_norm_eps=model.blocks[0].norm1.eps,
        global_pool={"token": "cls", "avg": "avg"}[model.global_pool],
        pos_embed_antialias=True,
    )


def main() -> None:
    import timm

    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models, golden, cases = {}, {}, {}
    for i, (name, (stem, kwargs, (h, w))) in enumerate(CASES.items()):
        if kwargs is not None:
            model = VisionTransformer(**kwargs).eval()
            randomize(model, seed=1000 + i)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(OUT / f"{stem}.safetensors"), metadata={"format": "pt"})
            models[stem] = (model, kwargs)
        model, kwargs = models[stem]
        g = torch.Generator().manual_seed(2000 + i)
        x = torch.randn(BATCH, model.in_chans, h, w, generator=g)
        ref = model.double()
        with torch.no_grad():
            feats = ref.forward_features(x.double())
            pre = ref.forward_head(feats, pre_logits=True)
            logits = ref.forward_head(feats)
            fp32_logits = model.float()(x)  # sanity: fp32 timm vs the fp64 reference
        model.float()
        drift = ((fp32_logits.double() - logits).norm() / logits.norm()).item()
        golden[f"{name}.input"] = x
        golden[f"{name}.logits"] = logits.float()
        golden[f"{name}.features"] = feats.float()
        golden[f"{name}.pre_logits"] = pre.float()
        cfg = vit_fast_config(model)
        overrides = {"num_heads": cfg["num_heads"]}  # not recorded in a timm state dict
        if cfg["img_size"][0] != cfg["img_size"][1]:
            overrides["img_size"] = cfg["img_size"]  # a non-square grid cannot be read from pos_embed's length
        cases[name] = dict(
            weights=f"{stem}.safetensors",
            timm_kwargs=kwargs,
            input_shape=list(x.shape),
            eval_size=[h, w],
            outputs={k: list(golden[f"{name}.{k}"].shape) for k in ("logits", "features", "pre_logits")},
            layer_norm_eps=cfg["layer_norm_eps"],
            vit_fast_overrides=overrides,
            vit_fast_config=cfg,
            timm_fp32_vs_fp64_rel_err=drift,
        )
        print(f"{name}: eval {h}x{w}, logits {tuple(logits.shape)}, features {tuple(feats.shape)}, "
              f"timm fp32 vs fp64 rel err {drift:.1e}")
    save_file(golden, str(OUT / "golden.safetensors"))
    meta = dict(timm=timm.__version__, torch=torch.__version__, batch=BATCH, cases=cases)
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(os.path.getsize(p) for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)




# ---- model families (issue 11): `python tests/make_timm_golden.py --families` ---------------------------------
# Real timm model definitions (timm.create_model with pretrained=False), shrunk by keyword overrides, so every
# family switch (pre_norm, quick GELU, no_embed_class, registers, SwiGLU, LayerScale, map pooling, distillation
# token) is timm's own. Written to tests/data/timm_golden/families/ beside the classic cases, same layout.
FAMILY_OUT = OUT / "families"
FAMILY_CASES = {
    # name -> (timm model name, kwargs, eval (H, W), the loader overrides a weight file needs beyond the state dict)
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(
        img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=24, dynamic_img_size=True), (48, 32),
        dict(num_heads=2, act_layer="quick_gelu", layer_norm_eps=1e-5)),
    "dinov2": ("vit_small_patch14_dinov2", dict(
        img_size=28, embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True), (42, 56),
        dict(num_heads=2)),
    "dinov2_reg_swiglu": ("vit_giant_patch14_reg4_dinov2", dict(
        img_size=28, embed_dim=64, depth=2, num_heads=2, mlp_ratio=3.0, dynamic_img_size=True), (42, 28),
        dict(num_heads=2)),
    "siglip_hd80": ("vit_base_patch16_siglip_224", dict(
        img_size=32, embed_dim=160, depth=1, num_heads=2, mlp_ratio=1.0, dynamic_img_size=True), (32, 48),
        dict(num_heads=2)),  # timm builds its SigLIP towers with exact GELU
    "deit_distilled": ("deit_base_distilled_patch16_224", dict(
        img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=7), (32, 32),
        dict(num_heads=2)),
}


def randomize_any(model: torch.nn.Module, seed: int) -> None:
    """Seeded large values for every parameter: matrices N(0, 1/fan_in), LayerNorm weights 1 + 0.5 N, other
    vectors (biases, tokens, position embeddings, LayerScale) 0.5 N."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) in norms:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and p.shape[0] > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def main_families() -> None:
    import timm

    FAMILY_OUT.mkdir(parents=True, exist_ok=True)
    golden, cases = {}, {}
    for i, (name, (timm_name, kwargs, (h, w), overrides)) in enumerate(FAMILY_CASES.items()):
        model = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
        randomize_any(model, seed=3000 + i)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(FAMILY_OUT / f"{name}.safetensors"), metadata={"format": "pt"})
        x = torch.randn(BATCH + 1, 3, h, w, generator=torch.Generator().manual_seed(4000 + i))
        ref = model.double()
        with torch.no_grad():
            feats = ref.forward_features(x.double())
            golden[f"{name}.input"] = x
            golden[f"{name}.features"] = feats.float()
            golden[f"{name}.pre_logits"] = ref.forward_head(feats, pre_logits=True).float()
            golden[f"{name}.logits"] = ref.forward_head(feats).float()
            inter = ref.forward_intermediates(x.double(), indices=[0], norm=True, intermediates_only=True)
            golden[f"{name}.intermediate0"] = inter[0].float()
        cases[name] = dict(weights=f"{name}.safetensors", timm_model=timm_name, timm_kwargs=kwargs,
                           eval_size=[h, w], vit_fast_overrides=overrides)
        print(f"{name}: {timm_name} eval {h}x{w}, features {tuple(feats.shape)}")
    save_file(golden, str(FAMILY_OUT / "golden.safetensors"))
    meta = dict(timm=timm.__version__, torch=torch.__version__, cases=cases)
    (FAMILY_OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main_families() if "--families" in sys.argv[1:] else main()
