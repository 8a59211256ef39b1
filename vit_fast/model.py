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

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class PatchEmbed(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)

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

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if backend == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU, as the paper and both libraries


class Block(nn.Module):
    """Pre-LN encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), backend)
        return x + self.mlp(self.norm2(x))


class PreLogits(nn.Module):
    """Dense + tanh on the pooled token: the pre-training head's hidden layer (HF's pooler)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc = nn.Linear(config.embed_dim, config.representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + config.num_patches, d) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        avg = config.global_pool == "avg"
        # timm's layout: with average pooling the final norm moves after the pooling (fc_norm)
        self.norm = nn.Identity() if avg else nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=config.layer_norm_eps) if avg else nn.Identity()
        self.pre_logits = PreLogits(config) if config.representation_size else nn.Identity()
        self.head = nn.Linear(config.num_features, config.num_classes) if config.num_classes else nn.Identity()
        self._init_weights()
        self._cache: dict = {}
        self._backend = "auto"
        self.set_backend(backend)

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=1e-6)
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
        if h % p or w % p or h == 0 or w == 0:
            raise ValueError(f"image sides must be positive multiples of the patch size {p}; got {h}x{w}")
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
        """(1, 1+N, D) position embeddings for a patch grid, resampled in fp32 and cached per grid."""
        if tuple(grid) == self.config.grid_size:
            return self.pos_embed

        def compute():
            pos = self.pos_embed[0]
            patches = resample_patch_pos_embed(
                pos[1:], self.config.grid_size, grid, antialias=self.config.pos_embed_antialias
            )
            return torch.cat([pos[:1].float(), patches]).to(pos.dtype).unsqueeze(0)

        return self._cached(("pos", tuple(grid)), [self.pos_embed], compute)

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
        dtype = self.patch_embed.proj.weight.dtype
        if is_uint8:
            w, b = self.folded_patch_weights()
            tokens = self.patch_embed(x.to(dtype), w.to(dtype), b.to(dtype))
        else:
            tokens = self.patch_embed(x.to(dtype))
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed_for(grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, 1+N, D) tokens after the final norm (HF's last_hidden_state)."""
        x, is_uint8 = self._check_input(x)
        return self._features(x, is_uint8, backends.resolve(self._backend, x.device))

    def _features(self, x: torch.Tensor, is_uint8: bool, backend: str) -> torch.Tensor:
        if backend == "triton":
            from . import triton_path

            return triton_path.forward_features(self, x, is_uint8)
        tokens = self._embed(x, is_uint8)
        for block in self.blocks:
            tokens = block(tokens, backend)
        return self.norm(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.global_pool == "avg":
            return tokens[:, 1:].mean(dim=1)
        return tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1+N, D) tokens -> logits, or the pooled embedding (B, num_features) with `pre_logits=True`."""
        x = self.pre_logits(self.fc_norm(self.pool(tokens)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, is_uint8 = self._check_input(x)
        backend = backends.resolve(self._backend, x.device)
        if backend == "triton" and self.config.global_pool == "cls":
            from . import triton_path

            # the head reads only [CLS]: the last block runs for that one query (same logits)
            return self.forward_head(triton_path.forward_cls(self, x, is_uint8))
        return self.forward_head(self._features(x, is_uint8, backend))

    def capture_cuda_graphs(self, batch_sizes, image_size=None, dtype=None, channels_last: bool = False):
        """Capture one CUDA graph of `forward` per batch size; returns a callable that replays the graph when an
        input matches a captured (shape, dtype) and runs eagerly otherwise. `dtype` is the input dtype (default
        the model's; torch.uint8 for raw pixels, NHWC with `channels_last`). Capture after moving the model to
        its device and dtype; graphs hold their own input/output buffers (results are returned as copies)."""
        from .cuda_graphs import capture_model

        return capture_model(self, batch_sizes, image_size=image_size, dtype=dtype, channels_last=channels_last)

    def to_fp8(self) -> "VisionTransformer":
        """FP8 weights for the QKV, out-projection, FC1 and FC2 GEMMs, in place (see vit_fast.fp8.quantize)."""
        from .fp8 import quantize

        return quantize(self, "fp8")

    @property
    def is_fp8(self) -> bool:
        from .fp8 import is_quantized

        return is_quantized(self)

    def extra_repr(self) -> str:
        return f"backend={self._backend!r}"
