"""Helpers shared by tests: random-but-meaningful weights and reference models."""
from types import SimpleNamespace

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


def fp8_gemm_operands(m: int, k: int, n: int, device) -> SimpleNamespace:
    """Fresh operands of the model's FP8 GEMM launches at (M, K, N): x (M, K) bf16 rows with LayerNorm weight g and
    bias b, the bias (N,) and residual (M, N) in bf16, W as e4m3 codes with per-channel scales (wq, ws), and an e4m3
    input grouped per 128 channels (codes, scales: what FC1 writes for FC2)."""
    from vit_fast import fp8

    wq, ws = fp8.quantize_rows(torch.randn(n, k, device=device))
    codes, scales = fp8.quantize_groups(torch.randn(m, k, device=device), 128)
    return SimpleNamespace(x=torch.randn(m, k, device=device).bfloat16(), g=torch.randn(k, device=device).bfloat16(),
                           b=torch.randn(k, device=device).bfloat16(), bias=torch.randn(n, device=device).bfloat16(),
                           residual=torch.randn(m, n, device=device).bfloat16(), wq=wq, ws=ws, codes=codes,
                           scales=scales)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance between a and b in representable steps (bf16, fp16 or e4m3, same dtype; sign-magnitude
    bits mapped to a monotonic integer line)."""
    bits = {torch.bfloat16: (torch.int16, 0x7FFF), torch.float16: (torch.int16, 0x7FFF),
            torch.float8_e4m3fn: (torch.int8, 0x7F)}[a.dtype]

    def line(t):
        v = t.view(bits[0]).to(torch.int32)
        return torch.where(v < 0, -(v & bits[1]), v)

    return int((line(a.contiguous()) - line(b.contiguous())).abs().max())
