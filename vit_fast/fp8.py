"""FP8 (e4m3) inference: `quantize(model, "fp8")` / `model.to_fp8()`, and the exact torch emulation of the FP8 GEMMs.

What gets quantized: the four GEMMs of every encoder block (QKV, attention out-projection, FC1, FC2), which hold more
than 95 % of a ViT's FLOPs, less those `exclude` keeps in the model dtype (a GEMM kind such as "fc2", or layer-name
patterns such as "blocks.0.*": what a model too close to e4m3's limit may need). Their weights are stored once as
float8_e4m3fn with one fp32 scale per output channel; activations are quantized per token (one scale per row) when they
are produced, FC2's input per token and 128 channels (one scale per row and group: FC1's epilogue writes it as e4m3, and
sees 128 columns of a row at a time, not the whole row), and the out-projection's at one scale per image when QKV is FP8
too (attention writes it as e4m3 at a bound known before any head is stored: attention_output_bound). Attention computes
in the model dtype, and LayerNorm, the residual stream, the patch embedding and the head stay in it: the patch embedding
is < 1 % of the FLOPs (K = 3·P² = 768, M = B·N) and reads raw pixels, so FP8 there would cost accuracy at the input for
no measurable speed; the head is one small GEMM on the pooled token.

Backends of a quantized model:
- "triton": the ops of `kernels/` see a float8 weight and dispatch to the FP8 engines (quant_fp8, then gemm_fp8_tma
  on sm_90 or gemm_fp8). Needs compute capability 8.9 / 9.0 (or TRITON_INTERPRET=1 on CPU).
- "torch" / "sdpa": `Fp8Linear.forward` runs the same arithmetic in torch (float8 casts, the same scales, fp32
  matmul of the dequantized integers): a reference on any device, not a fast path.
"""
from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn
import torch.nn.functional as F

# the one definition of each (the kernels do not import the model code)
from .kernels._common import FP8_DTYPE, FP8_GROUP, FP8_MAX
from .kernels.quant_fp8 import AMAX_FLOOR
from .model import ACTIVATIONS as MODEL_ACTIVATIONS
from .model import swiglu

SCHEMES = ("fp8",)


def quantize_rows(x: torch.Tensor) -> tuple:
    """Per-row (per-token / per-output-channel) e4m3 quantization of x (..., K) computed in fp32:
    returns (q float8_e4m3fn (..., K), scale fp32 (...,)) with x ≈ q · scale[..., None]. Same arithmetic as the
    Triton kernel: amax = max(|row|, 1e-12), q = clamp(x · (448 / amax), ±448) rounded to nearest even,
    scale = amax / 448."""
    x = x.float()
    inv, scale = row_scales(x)
    return _codes(x, inv.unsqueeze(-1)), scale


def row_scales(x: torch.Tensor) -> tuple:
    """(448 / amax, amax / 448) per row of fp32 x, amax = max(|row|, AMAX_FLOOR): quantize_rows' two scales."""
    return amax_scales(x.abs().amax(dim=-1).clamp_min(AMAX_FLOOR))


def amax_scales(amax: torch.Tensor) -> tuple:
    """(448 / amax, amax / 448): the quantization and dequantization scales of values bounded by amax."""
    # tensor / tensor: torch computes `scalar / tensor` as scalar · (1 / tensor), one rounding more than the kernel
    fp8_max = torch.full_like(amax, FP8_MAX)
    return fp8_max / amax, amax / fp8_max


def _codes(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """clamp(x · inv, ±448) rounded to e4m3 (nearest even), x in fp32."""
    return (x * inv).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def as_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) -> (..., G, group), G = ceil(K / group), the last group zero-padded (zeros move no group's max)."""
    pad = -x.shape[-1] % group
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, group)


def quantize_groups(x: torch.Tensor, group: int) -> tuple:
    """Per (row, `group` consecutive channels) e4m3 quantization, quantize_rows' arithmetic on each group: returns
    (q float8_e4m3fn (..., K), scale fp32 (..., G)). FC2's input is quantized this way (INPUT_GROUPS): FC1's
    epilogue holds 128 columns of a row, never the whole row, so that is the finest scale it can write with the
    codes; the kernels compute the same (kernels/gemm_fp8.py, GROUP_OUT), from FC1's fp32 values: the model's torch
    emulation quantizes FC1's output as its modules return it, rounded to the model dtype first (bf16 models differ
    by a few codes one step apart; fp32 models not at all)."""
    q, scale = quantize_rows(as_groups(x.float(), group))
    return q.flatten(-2)[..., :x.shape[-1]], scale


def quantize_input(x: torch.Tensor, group: int = 0) -> tuple:
    """A GEMM input's quantization: per row (group 0) or per (row, group channels)."""
    return quantize_groups(x, group) if group else quantize_rows(x)


def dequantize_input(q: torch.Tensor, scale: torch.Tensor, group: int = 0) -> torch.Tensor:
    """fp32 values of quantize_input's (q, scale)."""
    if not group:
        return dequantize(q, scale)
    return (as_groups(q.float(), group) * scale.unsqueeze(-1)).flatten(-2)[..., :q.shape[-1]]


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 values of per-row quantized q (..., K) with scale (...,)."""
    return q.float() * scale.unsqueeze(-1)


def value_bound(w_q: torch.Tensor, w_scale: torch.Tensor, bias, dim: int) -> torch.Tensor:
    """(2,) fp32 [c, b] such that every value the FP8 QKV GEMM (weight rows [q; k; v], each `dim` long) computes
    for a token whose input scale is s satisfies |v| <= s · c + b: |v_j| = |s · Σ_k q_k · w_jk · s_j + b_j| and
    |q_k| <= 448, so c = 448 · max_j s_j · Σ_k |w_jk| over the value rows j, b = max_j |b_j|. Attention's output is
    a convex combination of value rows, so the same bound holds for it (attention_output_scales)."""
    w = w_q[2 * dim:3 * dim].float().abs().sum(dim=1) * w_scale[2 * dim:3 * dim].float()
    b = bias[2 * dim:3 * dim].float().abs().max() if bias is not None else w.new_zeros(())
    return torch.stack([w.max() * FP8_MAX, b]).float()


def attention_output_bound(in_scale: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """(B,) fp32 bound on |attention output| per image, for the FP8 out-projection's input: from the per-token
    scales (B, N) the QKV GEMM read its input with and value_bound's (c, b), max(max_t s_t · c + b, AMAX_FLOOR)
    (one FMA, as the attention kernel computes it; here in float64, so rounded once to fp32). Attention writes its
    output as e4m3 codes at scale bound / 448 (quantize_bounded), so the out-projection reads codes with no
    quantization pass between. e4m3 is a floating-point format: a scale above a row's own maximum costs relative
    precision only for values below 2^-6 of the scale's range (subnormals), and the exact code a per-row scale gives
    each row's maximum. On random L/16-shaped layers the bound was 400-830 times the rows' maxima and the
    out-projection's output SQNR moved by 0.02-0.13 dB; a row whose maximum dominates the GEMM loses more
    (benchmarks/NOTES.md, change 30; the model-level figures: benchmarks/fp8/accuracy.json)."""
    m = in_scale.float().amax(dim=-1).double()
    return (m * bound[0].double() + bound[1].double()).float().clamp_min(AMAX_FLOOR)


def quantize_bounded(x: torch.Tensor, amax: torch.Tensor) -> tuple:
    """Attention's e4m3 output: x (B, N, D) at one scale per image from attention_output_bound's amax (B,) ->
    (q float8_e4m3fn (B, N, D), per-token scales (B, N) fp32, equal within an image). The codes clamp to ±448: the
    bf16 values attention computes may pass the bound by an ulp."""
    inv, scale = amax_scales(amax)
    return _codes(x.float(), inv[:, None, None]), scale[:, None].expand(x.shape[:2]).contiguous()


def fp8_matmul(a_q, a_scale, w_q, w_scale) -> torch.Tensor:
    """fp32 (a_q @ w_q^T) · a_scale[:, None] · w_scale[None, :] for e4m3 a_q (..., K), w_q (N, K). Each product of
    two e4m3 values is exact in fp32; only the summation order differs from the tensor cores."""
    acc = a_q.float() @ w_q.float().t()
    return acc * a_scale.unsqueeze(-1) * w_scale


def fp8_matmul_groups(a_q, a_scale, w_q, w_scale, group: int) -> torch.Tensor:
    """fp8_matmul for A quantized per (row, group): each group's partial sum (exact products, fp32 sums) times its
    scale, summed over the groups in order, then · w_scale. The kernels scale one partial sum per K step (BLOCK_K
    divides the group: 128 on Hopper, 64 on Ada, 32 under the interpreter): the same sums up to fp32 rounding."""
    acc = None
    for g, k0 in enumerate(range(0, a_q.shape[-1], group)):
        part = (a_q[..., k0:k0 + group].float() @ w_q[:, k0:k0 + group].float().t()) * a_scale[..., g:g + 1]
        acc = part if acc is None else acc + part
    return acc * w_scale


def emulate_linear(x, w_q, w_scale, bias=None, *, ln=None, activation="none", residual=None, out_dtype=None,
                   input_group=0, x_scale=None):
    """The FP8 op in torch: [LayerNorm (fp32)] -> per-token quantization (with `input_group`, per token and that
    many channels: FC2's input) -> fp8_matmul -> + bias -> activation -> + residual -> one cast to out_dtype
    (default x.dtype). ln = (weight, bias, eps) or None. x float8_e4m3fn with x_scale (...,): codes quantized
    already, one scale per row (attention's output, quantize_bounded); out_dtype is then required. This is what
    kernels.ln_qkv / ln_linear / linear_residual compute with a float8 weight (tests compare them to it)."""
    if x_scale is not None:
        return _epilogue(fp8_matmul(x, x_scale.float(), w_q, w_scale), bias, activation, residual, out_dtype)
    out_dtype = out_dtype or x.dtype
    h = x.float()
    if ln is not None:
        h = F.layer_norm(h, h.shape[-1:], ln[0].float(), ln[1].float(), ln[2])
    a_q, a_scale = quantize_input(h, input_group)
    y = (fp8_matmul_groups(a_q, a_scale, w_q, w_scale, input_group) if input_group
         else fp8_matmul(a_q, a_scale, w_q, w_scale))
    return _epilogue(y, bias, activation, residual, out_dtype)


def _epilogue(y, bias, activation, residual, out_dtype):
    """fp32 GEMM result -> + bias -> activation -> + residual -> one cast: the kernels' epilogue order."""
    if bias is not None:
        y = y + bias.float()
    y = ACTIVATIONS[activation](y)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


# the GEMM epilogue's activations (kernels/_common.ACTIVATIONS): the model's MLP activations, "none", and packed
# SwiGLU (y (..., 2H) -> silu(y[..., :H]) * y[..., H:], in fp32 from the fp32 products like the kernel's epilogue)
ACTIVATIONS = {"none": lambda x: x, **MODEL_ACTIVATIONS, "swiglu": swiglu}


class Fp8Linear(nn.Module):
    """nn.Linear with its weight stored once as float8_e4m3fn and one fp32 scale per output channel.

    The weight and the scales are kept as raw bits in integer buffers (uint8, int32): `model.to(torch.bfloat16)`
    casts every floating tensor and would otherwise destroy them; integer buffers still follow `.to(device)`.
    `weight` / `weight_scale` are the float8 / fp32 views the kernels read, and the names the state dict uses (as
    checkpoints store them); forward() is the torch emulation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 input_group: int = 0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.input_group = input_group  # 0: one activation scale per token; else per token and that many channels
        self.register_buffer("weight_bits", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
        self.register_buffer("scale_bits", torch.zeros(out_features, dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_group: int = 0) -> "Fp8Linear":
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, w.device, w.dtype, input_group)
        q, scale = quantize_rows(w)
        new.weight_bits.copy_(q.view(torch.uint8))
        new.scale_bits.copy_(scale.view(torch.int32))
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach())
        return new

    @property
    def weight(self) -> torch.Tensor:
        """(N, K) float8_e4m3fn (a view of the stored bits)."""
        return self.weight_bits.view(FP8_DTYPE)

    @property
    def weight_scale(self) -> torch.Tensor:
        """(N,) fp32 per-output-channel dequantization scales."""
        return self.scale_bits.view(torch.float32)

    _STATE = (("weight", "weight_bits", torch.uint8, FP8_DTYPE), ("weight_scale", "scale_bits", torch.int32,
                                                                     torch.float32))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the float8 weight and fp32 scales the bit buffers hold, then the bias: nn.Linear's order, the file's names
        tensors = {"weight": self.weight, "weight_scale": self.weight_scale, "bias": self.bias}
        for name, tensor in tensors.items():
            if tensor is not None:
                destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        for name, bits, raw, dtype in self._STATE:
            if prefix + name not in state_dict:
                continue
            tensor = state_dict.pop(prefix + name)
            if tensor.dtype != dtype:  # a dense layer's float weight: another FP8 mix, not bits to reinterpret
                error_msgs.append(f"{prefix}{name}: an FP8 layer takes {dtype}, got {tensor.dtype} (a layer the "
                                  "saved model kept out of FP8? quantize with the same exclude)")
                continue
            state_dict[prefix + bits] = tensor.view(raw)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale)

    is_fp8 = True  # what model.Attention checks, without importing this module

    def forward(self, x: torch.Tensor, qkv: "Fp8Linear" = None, qkv_input: torch.Tensor = None) -> torch.Tensor:
        """x quantized per token (or token and input_group channels). With `qkv` and `qkv_input` (model.Attention's
        out-projection when its QKV layer is FP8 too): x (B, N, D), attention's output, quantized at one scale per
        image bounded from the QKV layer's weights and its input's scales (attention_output_bound), as the attention
        kernel writes it."""
        if qkv is None:
            return emulate_linear(x, self.weight, self.weight_scale, self.bias, input_group=self.input_group)
        bound = value_bound(qkv.weight, qkv.weight_scale, qkv.bias, x.shape[-1])
        q, scale = quantize_bounded(x, attention_output_bound(qkv.input_scales(qkv_input), bound))
        return emulate_linear(q, self.weight, self.weight_scale, self.bias, x_scale=scale, out_dtype=x.dtype)

    def input_scales(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token scales forward() quantizes x with (x (..., K) -> (...,))."""
        return row_scales(x.float())[1]

    def extra_repr(self) -> str:
        acts = f"per-token and {self.input_group}-channel" if self.input_group else "per-token"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=float8_e4m3fn (per-channel scales), activations={acts} float8_e4m3fn")


# the GEMMs FP8 covers in every block, by kind: their paths inside the block
GEMMS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
# kinds whose input is quantized per token and this many channels (quantize_groups), the others per token: FC2 reads
# FC1's activations, written as e4m3 by FC1's epilogue, which sees 128 columns of a row at a time
INPUT_GROUPS = {"fc2": FP8_GROUP}


def kind_of(name: str) -> str:
    """The GEMM kind of a layer name of layer_names()."""
    return next(kind for kind, path in GEMMS.items() if name.endswith("." + path))


def layer_names(depth: int) -> list:
    """The names of the GEMMs FP8 covers in a model of `depth` blocks (known from its config alone)."""
    return [f"blocks.{i}.{path}" for i in range(depth) for path in GEMMS.values()]


def quantized_linears(model) -> dict:
    """name -> (parent module, attribute) of the GEMMs FP8 covers (GEMMS, in every block)."""
    places = [(block, *path.rpartition(".")[::2]) for block in model.blocks for path in GEMMS.values()]
    return {name: (block.get_submodule(parent), leaf)
            for name, (block, parent, leaf) in zip(layer_names(len(model.blocks)), places)}


def fp8_layers(model) -> list:
    """Names of the layers of quantized_linears(model) that are FP8 (the others were kept by `exclude`)."""
    return [n for n, (parent, leaf) in quantized_linears(model).items()
            if isinstance(getattr(parent, leaf), Fp8Linear)]


def kept_layers(model) -> list:
    """Names of the layers of quantized_linears(model) that are not FP8 (kept in the model dtype), in model order."""
    fp8 = set(fp8_layers(model))
    return [n for n in quantized_linears(model) if n not in fp8]


def excluded_names(names: list, exclude) -> set:
    """The `names` that `exclude` keeps in the model dtype. Each item is a GEMM kind (qkv, proj, fc1, fc2: that GEMM
    in every block) or a glob over layer names (`blocks.0.*`, `blocks.*.mlp.fc2`); a string is a comma-separated
    list; None keeps none. An item that names no layer is an error, so a typo never leaves a layer quantized
    unnoticed."""
    if exclude is None:
        exclude = ()
    elif isinstance(exclude, str):
        exclude = [e for e in exclude.split(",") if e.strip()]
    elif not isinstance(exclude, (list, tuple, set, frozenset)) or not all(isinstance(e, str) for e in exclude):
        raise TypeError(f"exclude expects GEMM kinds or layer-name patterns: a string (\"fc2,qkv\") or a list of "
                        f"strings, got {exclude!r}")
    kept = set()
    for item in exclude:
        item = str(item).strip()
        hit = ({n for n in names if n.endswith("." + GEMMS[item])} if item in GEMMS
               else set(fnmatch.filter(names, item)))
        if not hit:
            raise ValueError(f"exclude: {item!r} names no FP8 layer; expected a GEMM kind ({', '.join(GEMMS)}) or a "
                             f"pattern over the layer names ({names[0]} ... {names[-1]})")
        kept |= hit
    if kept and kept == set(names):
        raise ValueError(f"exclude: {', '.join(map(repr, exclude))} keeps every one of the {len(names)} FP8 layers "
                         "in the model dtype: nothing would be FP8")
    return kept


def check_exclude(model, exclude) -> set:
    """The layer names `exclude` keeps in the model dtype (excluded_names), checked without touching the model, as
    quantize checks them: for a model that is FP8 already, `exclude` may only name the mix it has."""
    if not hasattr(model, "blocks"):
        raise TypeError(f"quantize expects a vit_fast VisionTransformer, got {type(model).__name__}")
    layers = quantized_linears(model)
    kept = excluded_names(list(layers), exclude)
    if getattr(model, "is_fp8", False):
        dense = kept_layers(model)
        if exclude and kept != set(dense):
            raise ValueError(f"exclude: the model is FP8 already, with {len(dense)} of {len(layers)} GEMM layers "
                             f"kept ({dense[:3] if dense else 'none'}); quantize the unquantized model to "
                             "change which layers stay out of FP8")
    return kept


def quantize(model, scheme: str = "fp8", exclude=()):
    """Convert `model` (a vit_fast VisionTransformer) in place to FP8 weights and return it.
    The weights are quantized from their current values (any float dtype) in fp32; the bf16/fp32 copies are
    released. Works on any device (CPU models run the torch emulation); the triton backend needs sm_89 / sm_90.

    `exclude` keeps layers in the model dtype (excluded_names: GEMM kinds or name patterns, e.g. ("fc2",) or
    ("blocks.0.*",)), as a model whose accuracy needs it may: every other GEMM is still FP8 with per-token
    activations (FC2: per token and 128 channels). A model that is FP8 already is returned as it is (the Predictor,
    `convert` and loading call this on FP8 checkpoints, whose kept layers must stay kept); an `exclude` that asks
    for another mix is an error."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    kept = check_exclude(model, exclude)
    if getattr(model, "is_fp8", False):
        return model
    todo = {n: l for n, l in quantized_linears(model).items() if n not in kept}
    odd = [f"{n} ({type(getattr(*l)).__name__})" for n, l in todo.items() if not isinstance(getattr(*l), nn.Linear)]
    if odd:  # checked first: nothing half-quantized
        raise TypeError(f"cannot quantize {odd[0]}: expected nn.Linear")
    for name, (parent, leaf) in todo.items():
        setattr(parent, leaf, Fp8Linear.from_linear(getattr(parent, leaf), INPUT_GROUPS.get(kind_of(name), 0)))
    model._fp8 = True  # model.is_fp8 (set here: looking at every layer on each forward would cost ~0.1 ms)
    cache = getattr(model, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return model
