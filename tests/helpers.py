"""Helpers shared by tests: random-but-meaningful weights and reference models."""
import torch


@torch.no_grad()
def randomize_(module: torch.nn.Module, scale: float = 1.0) -> torch.nn.Module:
    """Overwrite every parameter with values large enough that a wrong wiring changes the outputs visibly
    (default initializations are so small that LayerNorm hides many mistakes)."""
    for p in module.parameters():
        if p.dim() >= 2 and p.shape[0] > 1:
            p.normal_(0.0, scale * p[0].numel() ** -0.5)
        else:
            p.normal_(0.0, 0.5 * scale)
    return module
