"""Where the TMA engines (gemm_tma.py, gemm_fp8_tma.py) get their tensor descriptors: from the launch, or built by
each program on the device.

Why: a device-side descriptor (`tl.make_tensor_descriptor`) is written by every program to global scratch and fenced
before its first TMA load. In the compiled code (sm_90) the descriptors of A, W and the output are built one after
another, each ending in a wait for its copy to global memory and a CTA barrier: a quarter of the instructions of a
batch-1 GEMM program run before its first load (benchmarks/NOTES.md, "Host-side TMA descriptors"). At batch 1 a
program runs one tile, so that prologue is on the critical path of every GEMM launch. A host descriptor
(`triton.tools.tensor_descriptor.TensorDescriptor`) is a 128-byte kernel parameter that Triton's launcher encodes on
the host (cuTensorMapEncodeTiled) at each launch; a CUDA graph replays the parameters it captured, so the device
builds no descriptor (a program only prefetches one from its parameters).

A descriptor's block shape is the tile of the config the autotuner runs, so the engines pass their operands as
tensors and `descriptor_rules`, a `triton.heuristics` rule (it sees the config), turns them into descriptors. A
config pre-hook could set the block shapes too, but Triton's autotuner keeps no disk cache for configs with hooks,
and the harness relies on that cache across processes.

VITFAST_TMA_DESC=device keeps the device-side build (the engines' code before host descriptors), to measure the two
side by side (the benchmark's `b1desc` step). The launchers pass the setting as the HOST_DESC constexpr, an autotune
key of both engines; inside the kernels `kernel_descriptors` takes the launch's descriptors or builds them.
"""
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import DESC_ENV, switch_value

# operand argument -> the config values of its block's (rows, columns); EPI_N is BLOCK_N // EPI_SPLIT: the output and
# residual move in epilogue slices
BLOCKS = {"a": ("BLOCK_M", "BLOCK_K"), "w": ("BLOCK_N", "BLOCK_K"), "res": ("BLOCK_M", "EPI_N"),
          "out": ("BLOCK_M", "EPI_N")}


def host_descriptors() -> bool:
    """Whether launches pass host descriptors (VITFAST_TMA_DESC=host, the default); read at every launch."""
    return switch_value(DESC_ENV) == "host"


def block_shape(name: str, config: dict) -> list:
    """The TMA box of operand `name` under `config` (BLOCK_M, BLOCK_N, BLOCK_K, EPI_SPLIT)."""
    def value(key):
        return config["BLOCK_N"] // config["EPI_SPLIT"] if key == "EPI_N" else config[key]

    return [value(key) for key in BLOCKS[name]]


def descriptor_rules() -> dict:
    """`triton.heuristics` values for the operands a, w, res and out (passed by keyword): with HOST_DESC, a
    TensorDescriptor of the tensor with the running config's box (TMA zero-fills loads past the tensor's shape and
    clips stores, as the device-side descriptors do); without, the tensor itself. None (no residual) stays None."""
    def rule(name):
        def make(args):
            t = args[name]
            if t is None or not args["HOST_DESC"]:
                return t
            return TensorDescriptor.from_tensor(t, block_shape(name, args))

        return make

    return {name: rule(name) for name in BLOCKS}


def operand_signature(name: str, elem: str, config: dict, host: bool) -> str:
    """An operand's type in an AOT signature (tests/kernels/aot_compile.py), as the JIT specializes it: a host
    descriptor is "tensordesc<bf16[128, 64]>", a pointer "*bf16"."""
    if not host:
        return "*" + elem
    rows, cols = block_shape(name, config)
    return f"tensordesc<{elem}[{rows}, {cols}]>"


@triton.jit
def kernel_descriptors(a, w, res, out, M, N, K, w_rows, stride_am, stride_wn, stride_rm, stride_om,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EPI_N: tl.constexpr,
                       HAS_RESIDUAL: tl.constexpr, HOST_DESC: tl.constexpr):
    """An engine kernel's (A, W, residual, output) descriptors: the launch's (HOST_DESC), or built by this program
    over A (M, K), W (w_rows, K) and the residual and output (M, N). Without a residual its descriptor is the
    output's (never read)."""
    if HOST_DESC:
        a_desc = a
        w_desc = w
        out_desc = out
        if HAS_RESIDUAL:
            res_desc = res
        else:
            res_desc = out_desc
    else:
        a_desc = tl.make_tensor_descriptor(a, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(w, shape=[w_rows, K], strides=[stride_wn, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
        out_desc = tl.make_tensor_descriptor(out, shape=[M, N], strides=[stride_om, 1],
                                             block_shape=[BLOCK_M, EPI_N])
        if HAS_RESIDUAL:
            res_desc = tl.make_tensor_descriptor(res, shape=[M, N], strides=[stride_rm, 1],
                                                 block_shape=[BLOCK_M, EPI_N])
        else:
            res_desc = out_desc
    return a_desc, w_desc, res_desc, out_desc


def aot_variants(exhaustive: bool = False):
    """None of its own: kernel_descriptors is compiled into both TMA engines' variants (HOST_DESC both ways)."""
    return []
