"""The Vision Transformer of Dosovitskiy et al. (2020) in plain PyTorch, computing exactly what timm's
`VisionTransformer` and Hugging Face's `ViTModel` / `ViTForImageClassification` compute.

Parameter names mirror timm's, so a timm state dict loads as it is. The module is also the host of the switchable
backends: "torch" and "sdpa" run the blocks below, "triton" hands the whole forward to `vit_fast.triton_path`,
which calls the fused kernels with these same parameters (no copies of the weights).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backends
from .config import ViTConfig
from .pos_embed import resample_patch_pos_embed
from .timm_compat import TimmAttributes

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class PatchEmbed(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p, bias=config.patch_bias)
        # timm's PatchEmbed attributes, for the size the position table was trained at
        self.patch_size, self.img_size, self.grid_size = (p, p), config.img_size, config.grid_size
        self.num_patches = config.num_patches

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias=None) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D); `weight`/`bias` replace the projection's (normalization-folded ones)."""
        w = self.proj.weight if weight is None else weight
        b = self.proj.bias if bias is None else bias
        x = F.conv2d(x, w, b, stride=self.proj.stride)
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, backend: str, weights: Optional[list] = None) -> torch.Tensor:
        """`weights`: a list the softmax weights (B, heads, N, N) are appended to (the eager path forms them)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if backend == "sdpa" and weights is None:
            ctx = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            if weights is not None:
                weights.append(attn)
            ctx = attn @ v
        ctx = ctx.transpose(1, 2).reshape(b, n, c)
        if getattr(self.qkv, "is_fp8", False) and getattr(self.proj, "is_fp8", False):
            return self.proj(ctx, qkv=self.qkv, qkv_input=x)  # e4m3 at a bound from QKV (vit_fast.fp8)
        return self.proj(ctx)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as the paper and both libraries
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
}


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """Packed SwiGLU: silu(first half) * second half (timm's SwiGLUPacked, HF's gate_proj / up_proj)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        swiglu_ = config.mlp_type == "swiglu"
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim * (2 if swiglu_ else 1))
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)
        self.act = swiglu if swiglu_ else ACTIVATIONS[config.act_layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor, backend: str, weights: Optional[list] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), backend, weights)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """Multi-head attention pooling ("map", SigLIP): a learned probe query attends over all tokens, then
    x + MLP(LN(x)); names as timm's AttentionPoolLatent (HF's head.probe / head.attention / head.mlp)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        d = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D)."""
        b, n, d = x.shape
        q = self.q(self.latent).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2).expand(b, -1, -1, -1)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        x = self.proj(x.transpose(1, 2).reshape(b, 1, d))
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


class PreLogits(nn.Module):
    """Dense + tanh on the pooled token: the pre-training head's hidden layer (HF's pooler)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc = nn.Linear(config.embed_dim, config.representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class VisionTransformer(TimmAttributes, nn.Module):
    def __init__(self, config: ViTConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        d, eps = config.embed_dim, config.layer_norm_eps
        self.patch_embed = PatchEmbed(config)
        # prefix tokens in timm's order and names: [cls, dist | registers..., patches]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if config.dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, d)) if config.reg_tokens else None
        self.pos_embed = nn.Parameter(torch.randn(1, config.num_pos_tokens, d) * 0.02)
        self.norm_pre = nn.LayerNorm(d, eps=eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        # timm's layout: with fc_norm (default for average pooling) the final norm moves after the pooling
        self.norm = nn.Identity() if config.use_fc_norm else nn.LayerNorm(d, eps=eps)
        self.attn_pool = AttentionPool(config) if config.global_pool == "map" else None
        self.fc_norm = nn.LayerNorm(d, eps=eps) if config.use_fc_norm else nn.Identity()
        self.pre_logits = PreLogits(config) if config.representation_size else nn.Identity()
        self.head = self._make_head(config)
        # else HF's DeiTModel (its pooler on [CLS]) or DeiTForImageClassification ([CLS]'s head alone)
        distilled = config.dist_token and config.dist_head and not config.representation_size
        self.head_dist = self._make_head(config) if distilled else None
        self._init_weights()
        self._cache: dict = {}
        self._backend = "auto"
        self._fp8 = False  # is_fp8: set by vit_fast.fp8.quantize
        self.set_backend(backend)

    @staticmethod
    def _make_head(config: ViTConfig) -> nn.Module:
        if not config.num_classes:
            return nn.Identity()
        return nn.Linear(config.num_features, config.num_classes, bias=config.head_bias)

    def _init_weights(self) -> None:
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ----- backends -------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    def set_backend(self, name: str) -> "VisionTransformer":
        """Switch the implementation without touching the weights. Raises RuntimeError if triton cannot run."""
        backends.check_name(name)
        if name == "triton":
            reason = backends.triton_unavailable_reason(None)
            if reason is not None:
                raise RuntimeError(f"backend 'triton' cannot run: {reason}")
        self._backend = name
        return self

    @property
    def num_features(self) -> int:
        return self.config.num_features

    # ----- inputs ---------------------------------------------------------------------------------------------
    def _check_input(self, x) -> tuple:
        """Validate an image batch; returns it as a (B, C, H, W) view and whether it is raw uint8 pixels."""
        c, p = self.config.in_chans, self.config.patch_size
        expected = f"a (B, {c}, H, W) float tensor, or uint8 pixels as (B, {c}, H, W) or (B, H, W, {c})"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected {expected}; got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected {expected}; got a tensor of shape {tuple(x.shape)}")
        is_uint8 = x.dtype == torch.uint8
        if is_uint8:
            if x.shape[1] != c and x.shape[-1] == c:
                x = x.permute(0, 3, 1, 2)  # NHWC pixels: a strided view, no copy
        elif x.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"expected {expected}; got dtype {x.dtype}")
        if x.shape[1] != c:
            raise ValueError(f"expected {expected}; got shape {tuple(x.shape)} ({x.shape[1]} channels)")
        h, w = x.shape[-2:]
        native = self.config.img_size
        if not self.config.accepts_image(h, w):
            raise ValueError(f"image sides must be positive multiples of the patch size {p} (or the model's "
                             f"{native[0]}x{native[1]}); got {h}x{w}")
        if h % p or w % p:  # the native size of a model like SigLIP so400m/14 at 384: drop what the conv would
            x = x[..., : h - h % p, : w - w % p]
        weight = self.patch_embed.proj.weight
        if x.device != weight.device:
            raise ValueError(f"input is on {x.device} but the model is on {weight.device}; move one of them")
        return x, is_uint8

    def _cached(self, key, tensors, compute):
        """Memoize `compute()` until any of `tensors` is modified in place or replaced."""
        if torch.compiler.is_compiling():  # traced once into the graph; no Python-side cache there
            return compute()
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = compute()
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            self._cache[key] = (stamp, value)
        return value

    def pos_embed_for(self, grid: tuple) -> torch.Tensor:
        """(1, P+N, D) position embeddings for a patch grid (P: the prefix tokens they cover, 0 with
        no_embed_class), the patch part resampled in fp32 and cached per grid; prefix rows are never resampled."""
        if tuple(grid) == self.config.grid_size:
            return self.pos_embed

        def compute():
            pos = self.pos_embed[0]
            prefix = self.num_pos_prefix
            patches = resample_patch_pos_embed(
                pos[prefix:], self.config.grid_size, grid, antialias=self.config.pos_embed_antialias
            )
            return torch.cat([pos[:prefix].float(), patches]).to(pos.dtype).unsqueeze(0)

        return self._cached(("pos", tuple(grid)), [self.pos_embed], compute)

    @property
    def num_pos_prefix(self) -> int:
        """Prefix tokens the position table covers."""
        return 0 if self.config.no_embed_class else self.config.num_prefix_tokens

    def prefix_tokens(self) -> list:
        """The learned prefix tokens in sequence order, each (1, n, D)."""
        return [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]

    def folded_patch_weights(self) -> tuple:
        """fp32 (weight, bias) of the patch projection with (x/255 - mean)/std folded in, for uint8 pixels."""
        proj = self.patch_embed.proj

        def compute():
            mean = torch.tensor(self.config.image_mean, device=proj.weight.device)
            std = torch.tensor(self.config.image_std, device=proj.weight.device)
            w = proj.weight.float()
            bias = proj.bias.float() if proj.bias is not None else torch.zeros(w.shape[0], device=w.device)
            folded_w = w / (255.0 * std).view(1, -1, 1, 1)
            folded_b = bias - (w * (mean / std).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
            return folded_w, folded_b

        tensors = [proj.weight] + ([proj.bias] if proj.bias is not None else [])
        return self._cached("folded", tensors, compute)

    # ----- forward --------------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
        """Patch tokens with prefix tokens and position embeddings, before norm_pre."""
        dtype = self.patch_embed.proj.weight.dtype
        if is_uint8:
            w, b = self.folded_patch_weights()
            tokens = self.patch_embed(x.to(dtype), w.to(dtype), b.to(dtype))
        else:
            tokens = self.patch_embed(x.to(dtype))
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        pos = self.pos_embed_for(grid)
        prefix = [t.expand(tokens.shape[0], -1, -1) for t in self.prefix_tokens()]
        if self.config.no_embed_class:
            return torch.cat(prefix + [tokens + pos], dim=1)
        return torch.cat(prefix + [tokens], dim=1) + pos

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, P+N, D) tokens after the final norm (HF's last_hidden_state, timm's forward_features;
        un-normalized when the norm follows the pooling, fc_norm)."""
        x, is_uint8 = self._check_input(x)
        return self._features(x, is_uint8, self._resolve_backend(x.device))

    def _features(self, x: torch.Tensor, is_uint8: bool, backend: str) -> torch.Tensor:
        if backend == "triton":
            from . import triton_path

            return triton_path.forward_features(self, x, is_uint8)
        tokens = self.norm_pre(self._embed(x, is_uint8))
        for block in self.blocks:
            tokens = block(tokens, backend)
        return self.norm(tokens)

    def hidden_states(self, x: torch.Tensor, depth: Optional[int] = None) -> list:
        """[embeddings (after norm_pre), output of block 1, ..., output of block L]: HF's hidden_states, before
        the final norm; with `depth`, only the first `depth` blocks run. Runs on the current backend."""
        x, is_uint8 = self._check_input(x)
        backend = self._resolve_backend(x.device)
        if backend == "triton":
            from . import triton_path

            return triton_path.hidden_states(self, x, is_uint8, depth)
        states = [self.norm_pre(self._embed(x, is_uint8))]
        for block in list(self.blocks)[:depth]:
            states.append(block(states[-1], backend))
        return states

    def attention_maps(self, x: torch.Tensor, depth: Optional[int] = None) -> list:
        """Each block's attention weights, softmax(q k^T / sqrt(head_dim)) as (B, heads, tokens, tokens): HF's
        `attentions` (output_attentions=True), e.g. [CLS]'s attention over the patches, `maps[-1][:, :, 0, P:]`
        with P = config.num_prefix_tokens. The fused kernels never form them, so this runs the eager reference
        path (the torch backend) whatever the model's backend, as HF falls back to eager attention for them; with
        `depth`, only the first `depth` blocks."""
        return self._eager_with_weights(x, depth)[1]

    def _eager_with_weights(self, x: torch.Tensor, depth: Optional[int] = None) -> tuple:
        """(hidden_states as `hidden_states` returns them, attention weights per block), on the torch backend."""
        x, is_uint8 = self._check_input(x)
        states, weights = [self.norm_pre(self._embed(x, is_uint8))], []
        for block in list(self.blocks)[:depth]:
            states.append(block(states[-1], "torch", weights))
        return states, weights

    def forward_intermediates(self, x: torch.Tensor, indices=None, return_prefix_tokens: bool = False,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's `forward_intermediates`: the tokens after the blocks chosen by `indices` (an int n: the last n
        blocks; a sequence: block indices, negative from the end; None: all), each through the final norm if
        `norm`, prefix tokens removed (returned beside them with `return_prefix_tokens`, if any), as (B, D, H, W) maps
        ("NCHW") or (B, N, D) ("NLC"). Returns the intermediates, or (final features, intermediates) unless
        `intermediates_only`. `stop_early`: as timm, no block after the last one taken runs, and the final features
        are that block's output through the final norm."""
        from .intermediates import forward_intermediates

        return forward_intermediates(self, x, indices, return_prefix_tokens, norm, stop_early, output_fmt,
                                     intermediates_only)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pool = self.config.global_pool
        patches = tokens[:, self.config.num_prefix_tokens:]
        if pool == "map":  # the probe attends over the patch tokens only, as timm's default (pool_include_prefix)
            return self.attn_pool(patches)
        if pool == "avg":
            return patches.mean(dim=1)
        if pool == "cls_avg":
            return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
        return tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, P+N, D) tokens -> logits, or the pooled embedding (B, num_features) with `pre_logits=True`.
        Distilled: the mean of the [CLS] and distillation heads (timm's eval mode, HF's `logits`)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.embed_dim:
            raise ValueError(f"forward_head expects tokens of shape (B, tokens, {self.config.embed_dim}) as "
                             f"forward_features returns them, got {tuple(tokens.shape)}")
        return self._head(tokens, pre_logits)

    def _head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """forward_head on tokens this model produced (the forward's path: nothing to check)."""
        if self.head_dist is not None and not self.config.representation_size:
            if pre_logits:
                return (tokens[:, 0] + tokens[:, 1]) / 2
            return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2
        x = self.pre_logits(self.fc_norm(self.pool(tokens)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, is_uint8 = self._check_input(x)
        backend = self._resolve_backend(x.device)
        if backend == "triton" and self.config.global_pool == "cls":
            from . import triton_path

            # the head reads only the first prefix tokens: the last block runs for those queries (same logits)
            return self._head(triton_path.forward_prefix(self, x, is_uint8))
        return self._head(self._features(x, is_uint8, backend))

    def capture_cuda_graphs(self, batch_sizes, image_size=None, dtype=None, channels_last: bool = False):
        """Capture one CUDA graph of `forward` per batch size; returns a callable that replays the graph when an
        input matches a captured (shape, dtype) and runs eagerly otherwise. `dtype` is the input dtype (default
        the model's; torch.uint8 for raw pixels, NHWC with `channels_last`). Capture after moving the model to
        its device and dtype; graphs hold their own input/output buffers (results are returned as copies)."""
        from .cuda_graphs import capture_model

        return capture_model(self, batch_sizes, image_size=image_size, dtype=dtype, channels_last=channels_last)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        # An FP8 layer's float8 weight for a layer this model keeps dense would be copied unscaled: refused, and
        # the layer left as it is (torch raises with these messages once the rest is loaded).
        for key in [k for k, v in state_dict.items() if k.startswith(prefix) and v.dtype == torch.float8_e4m3fn]:
            layer = key[len(prefix):].rpartition(".")[0]
            try:
                module = self.get_submodule(layer)
            except AttributeError:  # no such layer: torch lists the key as unexpected
                continue
            if not hasattr(module, "weight_bits"):
                del state_dict[key]
                error_msgs.append(f"{key}: a float8 weight for {layer}, which is not FP8 in this model (quantize "
                                  "the model with the saved mix first: to_fp8(exclude=...))")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)

    def to_fp8(self, exclude=()) -> "VisionTransformer":
        """FP8 weights for the QKV, out-projection, FC1 and FC2 GEMMs, in place (see vit_fast.fp8.quantize);
        `exclude` keeps some in the model dtype: GEMM kinds ("fc2") or layer-name patterns ("blocks.0.*")."""
        from .fp8 import quantize

        return quantize(self, "fp8", exclude=exclude)

    def _resolve_backend(self, device: torch.device, warn: bool = True) -> str:
        """The backend that runs inputs on `device` (backends.resolve); an FP8 model's "auto" falls back to the
        torch emulation on a GPU without FP8 tensor cores (with a warning when `warn`)."""
        return backends.resolve(self._backend, device, self.pos_embed.dtype, fp8=self.is_fp8, warn=warn)

    @property
    def is_fp8(self) -> bool:
        # set by vit_fast.fp8.quantize (the only way GEMMs become FP8): no module walk, no fp8 import per forward
        return getattr(self, "_fp8", False)

    def extra_repr(self) -> str:
        return f"backend={self._backend!r}"
