"""Triton kernels for ViT inference. Each op is a plain function that calls a `torch.ops.vitfast.*` custom op
(so torch.compile(fullgraph=True) and CUDA-graph capture see one opaque node); see each module for its contract."""
from .attention import attention, attention_fp8
from .layer_norm import layer_norm
from .linear_residual import linear_residual, linear_residual_stats
from .ln_fold import FoldedLinear, fold_layer_norm, merge_partials
from .ln_linear import ln_linear, ln_linear_folded
from .ln_qkv import ln_qkv, ln_qkv_folded
from .patch_embed import patch_embed
from .quantize import quantize_fp8_groups

__all__ = ["FoldedLinear", "attention", "attention_fp8", "fold_layer_norm", "layer_norm", "linear_residual",
           "linear_residual_stats", "ln_linear", "ln_linear_folded", "ln_qkv", "ln_qkv_folded", "merge_partials",
           "patch_embed", "quantize_fp8_groups"]
