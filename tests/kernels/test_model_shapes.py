"""Every op of the triton backend against eager PyTorch at the shapes the real models run: ViT-B/16, L/16 and H/14
(197 and 257 tokens, widths 768/1024/1280, head dims 64 and 80) at batch 1 and 64, in bf16, fp16 and fp32.

The reference is float64. Each op's error must stay within the suite's budget (tolerances.kernel_budget: 2x
PyTorch's own error in the same dtype, plus a floor), so a kernel that is merely "close" at a toy shape but loses
precision at K = 5120 fails. On CUDA,
the block the op's output will land in is filled with NaN first (the caching allocator hands a freed block of the
same size to the next allocation), so unwritten elements show up as non-finite values.

Without a GPU (interpreter) only the head-dim-80 case runs, at two heads and 17 tokens: the checks stay exercised
in CI, the real shapes run on the GPU (`benchmarks/gpu_steps.sh tests`).
"""
import pytest
import torch
import torch.nn.functional as F
from tolerances import kernel_budget

from vit_fast import kernels
import vit_fast

CUDA = torch.cuda.is_available()
MODELS = ["vit_b_16", "vit_l_16", "vit_h_14"]
BATCHES = [1, 64]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _shape(name, batch):
    """(batch, image side, patch, width, heads, mlp, eps): the preset's on CUDA, a narrow stand-in on CPU."""
    cfg = vit_fast.get_config(name)
    d, heads, mlp = cfg.embed_dim, cfg.num_heads, cfg.mlp_dim
    side = cfg.img_size[0] if isinstance(cfg.img_size, (tuple, list)) else cfg.img_size
    if not CUDA:  # same head dim, two heads, 4x4 patches
        heads, side, batch = 2, 4 * cfg.patch_size, 1
        d = 2 * (cfg.embed_dim // cfg.num_heads)
        mlp = 4 * d
    return batch, side, cfg.patch_size, d, heads, mlp, cfg.layer_norm_eps


def _poisoned(fn, *args, numel, dtype, **kwargs):
    """Call `fn` right after freeing a NaN-filled block of the output's size (CUDA only)."""
    if CUDA:
        torch.empty(numel, dtype=dtype, device="cuda").fill_(float("nan"))  # freed at once, reused by the op
    return fn(*args, **kwargs)


def _check(name, out, ref, ours_in_torch, dtype):
    """out: the kernel's result; ref: float64; ours_in_torch: PyTorch's composition in `dtype`."""
    assert out.dtype == dtype, f"{name}: dtype {out.dtype}"
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten or poisoned elements?)"
    budget = kernel_budget(out, ref, ours_in_torch, dtype)
    assert budget.passed, f"{name}: {budget}"


def _rand(*shape, device, scale=1.0, shift=0.0):
    return torch.randn(*shape, device=device, dtype=torch.float64) * scale + shift


def _ln(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _attn(q, k, v, scale):
    out = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("model", MODELS)
def test_ops_at_model_shapes(model, batch, dtype, device):
    if not CUDA and (model != "vit_h_14" or batch != 1 or dtype == torch.bfloat16):
        pytest.skip("real shapes need a GPU; the interpreter runs the head-dim-80 stand-in in fp32 and fp16")
    batch, side, patch, d, heads, mlp, eps = _shape(model, batch)
    hd, n = d // heads, (side // patch) ** 2 + 1
    lo = lambda t: t.to(dtype)  # noqa: E731
    # fp64 masters: the kernel gets them rounded to `dtype`, the reference and PyTorch's composition use the rounded
    # values too (the reference in fp64), so only the arithmetic differs
    r = lambda *s, **k: lo(_rand(*s, device=device, **k)).double()  # noqa: E731

    # patch embedding: conv + flatten + positions, [CLS] + its position prepended
    img, pw, pb = r(batch, 3, side, side), r(d, 3, patch, patch, scale=(3 * patch * patch) ** -0.5), r(d, scale=0.02)
    pos, cls_pos = r(n - 1, d, scale=0.02), r(d, scale=0.02)

    def patch_ref(t):
        x = t(img)
        y = F.conv2d(x, t(pw), t(pb), stride=patch).flatten(2).transpose(1, 2) + t(pos)
        return torch.cat([t(cls_pos).expand(batch, 1, d), y], dim=1)

    out = _poisoned(kernels.patch_embed, lo(img), lo(pw), lo(pb), lo(pos), lo(cls_pos), numel=batch * n * d,
                    dtype=dtype)
    _check("patch_embed", out, patch_ref(lambda t: t), patch_ref(lo), dtype)

    # LN1 + QKV projection: the op returns the (3, B, H, N, d) view of its (B, N, 3, H, d) rows
    tokens, g1, b1 = r(batch, n, d, scale=2.0, shift=0.5), r(d, scale=0.3, shift=1.0), r(d, scale=0.3)
    wqkv, bqkv = r(3 * d, d, scale=d**-0.5), r(3 * d, scale=0.1)
    qkv_ref = lambda t: F.linear(_ln(t(tokens), t(g1), t(b1), eps), t(wqkv), t(bqkv)).view(batch, n, 3, heads, hd)  # noqa: E731
    out = _poisoned(kernels.ln_qkv, lo(tokens), lo(g1), lo(b1), eps, lo(wqkv), lo(bqkv), heads,
                    numel=3 * batch * n * d, dtype=dtype)
    ref, ours = qkv_ref(lambda t: t).permute(2, 0, 3, 1, 4), qkv_ref(lo).permute(2, 0, 3, 1, 4)
    _check("ln_qkv", out, ref, ours, dtype)

    # attention on q/k/v views of one head-major buffer, all queries and the [CLS] query alone (last layer)
    q, k, v = r(3, batch, heads, n, hd).unbind(0)
    for n_q in (n, 1):
        qs = q[:, :, :n_q]
        out = _poisoned(kernels.attention, lo(qs), lo(k), lo(v), hd**-0.5, numel=batch * n_q * d, dtype=dtype)
        _check(f"attention (Nq={n_q})", out, _attn(qs, k, v, hd**-0.5), _attn(lo(qs), lo(k), lo(v), hd**-0.5), dtype)

    # out-projection + residual
    ctx, wo, bo, res = r(batch, n, d), r(d, d, scale=d**-0.5), r(d, scale=0.1), r(batch, n, d)
    proj_ref = lambda t: t(res) + F.linear(t(ctx), t(wo), t(bo))  # noqa: E731
    out = _poisoned(kernels.linear_residual, lo(ctx), lo(wo), lo(bo), lo(res), numel=batch * n * d, dtype=dtype)
    _check("out-proj (linear_residual)", out, proj_ref(lambda t: t), proj_ref(lo), dtype)

    # LN2 + FC1 + GELU
    g2, b2 = r(d, scale=0.3, shift=1.0), r(d, scale=0.3)
    w1, bias1 = r(mlp, d, scale=d**-0.5), r(mlp, scale=0.1)
    fc1_ref = lambda t: F.gelu(F.linear(_ln(t(tokens), t(g2), t(b2), eps), t(w1), t(bias1)))  # noqa: E731
    out = _poisoned(kernels.ln_linear, lo(tokens), lo(g2), lo(b2), eps, lo(w1), lo(bias1), activation="gelu",
                    numel=batch * n * mlp, dtype=dtype)
    _check("fc1 (ln_linear gelu)", out, fc1_ref(lambda t: t), fc1_ref(lo), dtype)

    # FC2 + residual (K = mlp: the longest reduction)
    hidden, w2, bias2 = r(batch, n, mlp), r(d, mlp, scale=mlp**-0.5), r(d, scale=0.1)
    fc2_ref = lambda t: t(res) + F.linear(t(hidden), t(w2), t(bias2))  # noqa: E731
    out = _poisoned(kernels.linear_residual, lo(hidden), lo(w2), lo(bias2), lo(res), numel=batch * n * d,
                    dtype=dtype)
    _check("fc2 (linear_residual)", out, fc2_ref(lambda t: t), fc2_ref(lo), dtype)

    # final LayerNorm: every token, and the (B, 1, D) [CLS] rows the classifier path normalizes
    gf, bf = r(d, scale=0.3, shift=1.0), r(d, scale=0.3)
    for rows, x in (("all tokens", tokens), ("[CLS] rows", tokens[:, :1])):
        ln_ref = lambda t: _ln(t(x), t(gf), t(bf), eps)  # noqa: E731
        out = _poisoned(kernels.layer_norm, lo(x), lo(gf), lo(bf), eps, numel=x.numel(), dtype=dtype)
        _check(f"layer_norm ({rows})", out, ln_ref(lambda t: t), ln_ref(lo), dtype)
