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


def resample_pos_embed_table(
    table: torch.Tensor, num_prefix: int, old_grid: tuple, new_grid: tuple, antialias: bool = False
) -> torch.Tensor:
    """(1, P + N_old, D) table (P prefix tokens such as [CLS], left untouched) -> (1, P + N_new, D) in fp32.

    The same arithmetic as the model's on-the-fly resampling, so a table resampled at load equals what forward
    would compute at that size."""
    rows = table[0]
    patches = resample_patch_pos_embed(rows[num_prefix:], old_grid, new_grid, antialias=antialias)
    return torch.cat([rows[:num_prefix].float(), patches]).unsqueeze(0)


def infer_square_grid(num_patches: int) -> tuple:
    """(side, side) for a square grid of `num_patches`; ValueError when the count is not a square."""
    import math

    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} position embeddings do not form a square grid")
    return (side, side)
