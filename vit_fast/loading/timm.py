"""timm `VisionTransformer` -> vit-fast: a live model, its state dict, a .safetensors/.pth file of it, or timm's
checkpoint directory (config.json + weights, see timm_hub.py).

vit-fast's parameter names mirror timm's, so the state dict loads unchanged; what a file does not record (heads,
activation, non-square training size, normalization constants) comes from the live model's attributes, from timm's
config.json, from `config_overrides`, or from the presets and key-name rules.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ..config import ViTConfig
from . import hub as hub_repo
from . import timm_hub
from .hf_common import fold_layer_scale
from .state_dict import build_and_load, infer_num_heads, labels_for_head, like_source, read_weights, weights_in

_POOLS = {"token": "cls", "avg": "avg", "map": "map"}


def config_from_timm_state(state: dict, **overrides) -> ViTConfig:
    """Infer a ViTConfig from timm key names and shapes; `overrides` win."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        hint = ""
        if any("embeddings.patch_embeddings" in k for k in state):
            hint = " (these are Hugging Face weights: load their directory, with its config.json)"
        raise ValueError(f"not a timm ViT state dict: no 'patch_embed.proj.weight' / 'pos_embed'{hint}")
    d, in_chans, p, p2 = state["patch_embed.proj.weight"].shape
    if p != p2:
        raise ValueError(f"only square patches are supported, got {p}x{p2}")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    fc1_rows, mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0], state["blocks.0.mlp.fc2.weight"].shape[1]
    prefix = int("cls_token" in state) + int("dist_token" in state)
    prefix += state["reg_token"].shape[1] if "reg_token" in state else 0
    # timm's state dict tells attention pooling (attn_pool.*) and fc_norm (avg pooling unless overridden)
    pool = "map" if "attn_pool.latent" in state else "avg" if "fc_norm.weight" in state else "cls"
    cfg = dict(
        patch_size=p,
        in_chans=in_chans,
        embed_dim=d,
        depth=depth,
        mlp_dim=mlp_dim,
        mlp_type="swiglu" if fc1_rows == 2 * mlp_dim else "mlp",
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        head_bias="head.weight" not in state or "head.bias" in state,
        global_pool=pool,
        fc_norm="fc_norm.weight" in state,
        class_token="cls_token" in state,
        dist_token="dist_token" in state,
        reg_tokens=prefix - int("cls_token" in state) - int("dist_token" in state),
        pre_norm="norm_pre.weight" in state,
        patch_bias="patch_embed.proj.bias" in state,
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        layer_norm_eps=1e-5 if "norm_pre.weight" in state else 1e-6,  # timm's pre-norm ViTs (CLIP) use 1e-5
        pos_embed_antialias=True,  # timm's resample_abs_pos_embed antialiases
    )
    cfg.update(overrides)
    if "num_heads" not in cfg:
        cfg["num_heads"] = infer_num_heads(d)
    rows = state["pos_embed"].shape[1]
    if "no_embed_class" not in cfg:  # the table covers the prefix tokens or none of them
        if "img_size" in cfg:
            size = cfg["img_size"] if not isinstance(cfg["img_size"], int) else (cfg["img_size"],) * 2
            cfg["no_embed_class"] = prefix > 0 and rows == (size[0] // p) * (size[1] // p)
        else:
            cfg["no_embed_class"] = prefix > 0 and not _is_square(rows - prefix) and _is_square(rows)
    if "img_size" not in cfg:
        patches = rows - (0 if cfg["no_embed_class"] else prefix)
        if not _is_square(patches):
            raise ValueError(f"the {patches} patch position embeddings do not form a square grid; "
                             "pass img_size=(H, W) (CLI: --set 'img_size=[H,W]')")
        cfg["img_size"] = math.isqrt(patches) * p
    return ViTConfig.from_dict(cfg)  # unknown override names: a ValueError listing the known fields


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _activation(mlp) -> str:
    """act_layer of a timm Mlp / GluMlp, or raise."""
    act = getattr(mlp, "act", None)
    name = type(act).__name__
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if name == "QuickGELU":
        return "quick_gelu"
    if name == "GELUTanh":
        return "gelu_tanh"
    if name == "SiLU" and type(mlp).__name__ == "GluMlp" and not getattr(mlp, "gate_last", False):
        return "gelu"  # SwiGLU: the gate is fixed (mlp_type), act_layer is unused
    raise ValueError(f"this timm model's MLP ({type(mlp).__name__} with {name}) is not supported; vit-fast runs "
                     "GELU (erf or tanh), quick GELU and packed SwiGLU")


def _check_structure(model) -> None:
    """One line naming what is not timm's plain ViT: another model class (Eva, VisionTransformerRelPos, ...), another
    block (post-norm ResPostBlock, parallel blocks), a CNN stem (HybridEmbed) or another attention. Some of these
    have the plain ViT's key names, so their state dict alone would load and run wrong."""
    if not any(c.__name__ == "VisionTransformer" and c.__module__ == "timm.models.vision_transformer"
               for c in type(model).__mro__):
        raise ValueError(f"from_timm reads timm's VisionTransformer (and its DeiT subclasses); got "
                         f"{type(model).__module__}.{type(model).__name__}")
    parts = [("patch embedding", type(model.patch_embed).__name__, "PatchEmbed")]
    for block in model.blocks:
        parts.append(("blocks", type(block).__name__, "Block"))
        if hasattr(block, "attn"):
            parts.append(("attention", type(block.attn).__name__, "Attention"))
    wrong = list(dict.fromkeys(f"{what} {got} (vit-fast runs {want})" for what, got, want in parts if got != want))
    if wrong:
        raise ValueError("this timm model's structure is not the plain pre-norm ViT's: " + ", ".join(wrong))


def _live_model_config(model) -> dict:
    """Settings a live timm model knows but its state dict does not."""
    _check_structure(model)
    block = model.blocks[0]
    pool = getattr(model, "global_pool", "token")
    cfg = dict(
        num_heads=block.attn.num_heads,
        img_size=tuple(model.patch_embed.img_size),
        layer_norm_eps=block.norm1.eps,
        no_embed_class=bool(getattr(model, "no_embed_class", False)),
        act_layer=_activation(block.mlp),
        global_pool=_POOLS.get(pool, pool),
        fc_norm=hasattr(model.fc_norm, "weight"),
    )
    unsupported = []
    if pool not in _POOLS:
        unsupported.append(f"global_pool={pool!r}")
    if getattr(model, "pool_include_prefix", False) and getattr(model, "num_prefix_tokens", 0) and pool != "token":
        unsupported.append(f"{pool!r} pooling over the prefix tokens too (pool_include_prefix)")
    if pool == "token" and not hasattr(model.norm, "weight") and not cfg["fc_norm"]:
        unsupported.append("[CLS] pooling without a final LayerNorm")
    for owner, part in ((block.attn, "q_norm"), (block.attn, "k_norm"), (block.attn, "norm"), (block.mlp, "norm")):
        module = getattr(owner, part, None)  # timm keeps an nn.Identity where a norm is off
        if module is not None and not isinstance(module, torch.nn.Identity):
            unsupported.append(f"blocks with {part} layers")
    pool_module = getattr(model, "attn_pool", None)
    if pool_module is not None and (getattr(pool_module, "latent_len", 1) != 1 or
                                    getattr(pool_module, "pos_embed", None) is not None or
                                    getattr(pool_module, "pool", "token") != "token"):
        unsupported.append("attention pooling other than one latent with 'token' pooling")
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__} - {"LayerNorm"}
    if norms:
        unsupported.append(f"{', '.join(sorted(norms))} layers (vit-fast runs LayerNorm)")
    if getattr(model, "pos_embed", None) is None:
        unsupported.append("no absolute position embedding (pos_embed='none')")
    if getattr(block.attn.proj, "bias", 0) is None:
        unsupported.append("attention out-projections without bias (proj_bias=False)")
    if any(getattr(getattr(block.mlp, fc, None), "bias", 0) is None for fc in ("fc1", "fc2")):
        unsupported.append("MLP layers without bias")
    if unsupported:
        raise ValueError("this timm model uses features vit-fast does not implement: " + ", ".join(unsupported))
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in pretrained and "std" in pretrained:
        cfg.update(image_mean=tuple(pretrained["mean"]), image_std=tuple(pretrained["std"]))
    if "crop_pct" in pretrained:
        cfg["crop_pct"] = pretrained["crop_pct"]
    if pretrained.get("interpolation") in ("bicubic", "bilinear"):
        cfg["interpolation"] = pretrained["interpolation"]
    return cfg


def from_timm(obj, backend: str = "auto", revision: str | None = None, **config_overrides):
    """vit-fast model equal to a timm ViT given as a live model, a state dict, a weight file, or timm's checkpoint
    directory (config.json naming the architecture + model.safetensors or pytorch_model.bin; a weight file of those
    names beside such a config.json reads it too), local or a Hub repository ("timm/<model>.<tag>", or timm's
    "hf-hub:timm/..."; downloaded: hub.py; `revision` pins one). With timm installed, a timm model name
    ("vit_base_patch16_clip_224.openai") loads the weights `timm.create_model(name, pretrained=True)` would."""
    hub, asked = None, config_overrides
    named = hub_repo.name_of(obj, revision)  # a Hub repository or timm model name (raises for a stray revision)
    if isinstance(obj, torch.nn.Module):
        state = obj.state_dict()
        config_overrides = {**_live_model_config(obj), **config_overrides}
        source = f"timm model {type(obj).__name__}"
    elif isinstance(obj, dict):
        state, source = obj, "timm state dict"
    elif isinstance(obj, (str, Path)):
        source = str(obj)
        arch = None if named is None else named.architecture
        if arch is not None:  # a timm model name: refuse a structure vit-fast does not run before downloading
            timm_hub.settings({"architecture": arch}, source, _live_model_config)
        path = Path(obj) if named is None else hub_repo.download(named.repo, named.revision)
        hub = timm_hub.config_for(path)
        if arch is not None and hub is not None:  # the named architecture, as timm.create_model builds it
            hub = {**hub, "architecture": arch}
        if path.is_dir() and hub is None:
            raise ValueError(f"{source} is not a timm checkpoint directory: it has no config.json naming a timm "
                             "architecture")
        if hub is not None:  # before reading the weights: a config that cannot be used fails fast
            config_overrides = {**timm_hub.settings(hub, source, _live_model_config), **config_overrides}
        state, _ = read_weights(weights_in(path, "timm's config.json") if path.is_dir() else path)
    else:
        raise ValueError(f"from_timm expects a timm model, a state dict, a file or a timm checkpoint directory; got "
                         f"{type(obj).__name__}")
    if "norm_pre.weight" in state and "act_layer" not in config_overrides and hub is None:
        warnings.warn("timm weights do not record the MLP activation: assuming GELU, as timm's *_clip_* models; "
                      "pass act_layer='quick_gelu' for *_clip_quickgelu_* (OpenAI's CLIP as trained)", stacklevel=2)
    if hub is None and not isinstance(obj, torch.nn.Module) and "image_mean" not in config_overrides:
        warnings.warn("timm weights do not record the input normalization: assuming mean and std (0.5, 0.5, 0.5), "
                      "as timm's augreg ViTs and SigLIP; pass image_mean and image_std (CLI: --set) for ImageNet's "
                      "(DeiT, DINOv2) or CLIP's. They apply to uint8 pixels and to predict, serve and infer; float "
                      "inputs are taken as normalized", stacklevel=2)
    config = config_from_timm_state(state, **{**config_overrides, **labels_for_head(asked, state)})
    model = build_and_load(config, fold_layer_scale(state), backend, source)
    return like_source(model, obj) if isinstance(obj, torch.nn.Module) else model
