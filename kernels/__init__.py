"""Triton kernels for ViT inference. Each op is a plain function that calls a `torch.ops.vitfast.*` custom op
(so torch.compile(fullgraph=True) and CUDA-graph capture see one opaque node); see each module for its contract."""
from .attention import attention
from .layer_norm import layer_norm
from .linear_residual import linear_residual
from .ln_linear import ln_linear
from .ln_qkv import ln_qkv
from .patch_embed import patch_embed

__all__ = ["attention", "layer_norm", "linear_residual", "ln_linear", "ln_qkv", "patch_embed"]
