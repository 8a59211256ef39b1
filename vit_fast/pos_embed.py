"""Resampling learned 1-D position embeddings to another patch grid.

The paper fine-tunes at higher resolution by 2-D interpolating the patch position embeddings; the [CLS] embedding
is left untouched. Bicubic, computed in fp32 whatever the model dtype, with `antialias` chosen to match the source
library (timm's `resample_abs_pos_embed` antialiases, HF's `interpolate_pos_encoding` does not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_patch_pos_embed(
    patch_pos: torch.Tensor, old_grid: tuple, new_grid: tuple, antialias: bool = False
) -> torch.Tensor:
    """(N_old, D) patch position embeddings on `old_grid` -> (N_new, D) on `new_grid`, in fp32."""
    if tuple(old_grid) == tuple(new_grid):
        return patch_pos.float()
    n, d = patch_pos.shape
    if n != old_grid[0] * old_grid[1]:
        raise ValueError(f"{n} position embeddings do not form the {old_grid[0]}x{old_grid[1]} grid")
    grid = patch_pos.float().reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], d)
