"""Reading a kernel's SASS (nvdisasm's output): opcode counts, where its spill instructions sit, whether its
loops serialize the tensor cores (a full wgmma drain right after each MMA group) or promote partial sums, and whether
a kernel launched with programmatic dependent launch waits before touching memory.

The static report (benchmarks/kernels_static.py, through tests/kernels/aot_compile.inspect_compiled) tells a cold
spill, a value or two ptxas parks in local memory across a loop, from spills that run on every iteration. Kept
apart from aot_compile, which clears TRITON_INTERPRET when imported, so tests can read SASS text in-process.
"""
import re

# One instruction line: `/*0820*/  @!P0 STL.64 [R1], R0 ;` -> address (optional here), opcode, operands.
_INSTRUCTION = re.compile(r"^\s*(?:/\*([0-9a-f]+)\*/)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(.*)$")
_LABEL = re.compile(r"^\s*(\.L\w+):")
_TARGET = re.compile(r"`\((\.L\w+)\)")
_TABLE = re.compile(r'BRANCH_TARGETS\s+([.\w,]+)')  # `BRX R4 -0x3650 (*"BRANCH_TARGETS .L_x_10,.L_x_28"*)`
_JUMPS = ("BRA", "BRX", "JMP", "JMX")  # a loop's back edge is one of these; CALL/RET leave the function body
_FUNCTION = re.compile(r"^\s*\.type\s+\S+,\s*@function")  # the kernel's, then one per subroutine it calls


def opcodes(sass: str) -> list:
    """The opcode of every instruction, in order (modifiers dropped: `STL.64` -> `STL`)."""
    return [m[2] for m in map(_INSTRUCTION.match, sass.splitlines()) if m]


def _scan(sass: str, marked, on_label=None):
    """-> (addresses of the instructions `marked(opcode, operands)` selects, loop address ranges, whether a spill
    exists, whether the loops cannot be read (an instruction line without an address, a jump without a label target:
    an indirect branch could close a loop), whether a spill sits in a subroutine the kernel calls). A loop is the
    address range from a label to a later branch back to it; `on_label` is called at each label."""
    labels, hits, back_edges, pending = {}, [], [], []
    unreadable, any_spill, functions, spill_in_call = False, False, 0, False
    for line in sass.splitlines():
        if _FUNCTION.match(line):
            functions += 1
            continue
        label = _LABEL.match(line)
        if label:
            pending.append(label[1])
            if on_label is not None:
                on_label()
            continue
        inst = _INSTRUCTION.match(line)
        if not inst:
            continue
        opcode = inst[2]
        spill = opcode in ("STL", "LDL")
        any_spill |= spill
        if inst[1] is None:
            unreadable = True
            continue
        address = int(inst[1], 16)
        for name in pending:
            labels[name] = address
        pending = []
        if marked(opcode, inst[3]):
            hits.append(address)
        if spill:
            spill_in_call |= functions > 1
        elif opcode in _JUMPS:
            table = _TABLE.search(inst[3])
            targets = table[1].split(",") if table else [t[1] for t in [_TARGET.search(inst[3])] if t]
            unreadable |= not targets
            # a label seen already: a branch back (an indirect branch with its table, as a warp-specialized kernel
            # dispatches its partitions, may have several)
            back_edges += [(labels[t], address) for t in targets if t in labels]
    return hits, back_edges, any_spill, unreadable, spill_in_call


def _inside(addresses, loops) -> int:
    return sum(1 for a in addresses if any(lo <= a <= hi for lo, hi in loops))


def spills_in_loops(sass: str):
    """How many STL/LDL instructions sit inside a loop; None when that cannot be read, so a caller fails closed.

    A spill outside every loop (a value parked across the main loop, stored before it and loaded after) costs its
    accesses once per thread; one inside a loop costs them on every iteration. None when a spill exists and the
    loops cannot be read (an instruction without an address, an indirect jump) or a spill sits in a subroutine the
    kernel calls (`__cuda_sm20_div_s64` and kin: it runs as often as its callers)."""
    spills, loops, any_spill, unreadable, spill_in_call = _scan(sass, lambda opcode, _: opcode in ("STL", "LDL"))
    if not any_spill:
        return 0
    if unreadable or spill_in_call:
        return None
    return _inside(spills, loops)


# `WARPGROUP.DEPBAR.LE gsb0, 0x0`: wait until no wgmma of this warpgroup is in flight
_DRAIN = re.compile(r"^\.DEPBAR\.LE\s+gsb0\s*,\s*0x0\b")
_WGMMA = ("HGMMA", "QGMMA", "IGMMA")  # 16-bit, FP8 and int8 warpgroup MMAs


def _serialized(sass: str):
    """-> (addresses of the full drains that directly follow an MMA group's last wgmma (`..., gsb0`) in the same
    basic block, addresses of the wgmmas that start from a zero accumulator (`RZ, !UPT`), loops, unreadable)."""
    after_group, kinds = [False], []

    def end_block():
        after_group[0] = False

    def marked(opcode, operands):
        kind = None
        if opcode in _WGMMA:
            after_group[0] = "gsb0" in operands
            kind = "start" if "RZ, !UPT" in operands else None
        elif opcode == "WARPGROUP" and _DRAIN.match(operands):
            kind = "drain" if after_group[0] else None
            end_block()
        elif opcode in _JUMPS:
            end_block()
        if kind:
            kinds.append(kind)  # in step with _scan's hits: it records an address for each True
        return kind is not None

    hits, loops, _, unreadable, _ = _scan(sass, marked, on_label=end_block)
    drains = [a for a, k in zip(hits, kinds) if k == "drain"]
    starts = [a for a, k in zip(hits, kinds) if k == "start"]
    return drains, starts, loops, unreadable


def mma_loop_counts(sass: str) -> dict:
    """`mma_drains_in_loops` and `zero_started_mmas_in_loops` from one reading of the listing (None each when
    the loops cannot be read)."""
    drains, starts, loops, unreadable = _serialized(sass)
    return {"mma_drains_in_loops": None if unreadable else _inside(drains, loops),
            "zero_started_mmas_in_loops": None if unreadable else _inside(starts, loops)}


def mma_drains_in_loops(sass: str):
    """How many times a loop issues a wgmma group and at once waits for all of it (`WARPGROUP.DEPBAR.LE gsb0, 0x0`
    right after the group's last wgmma, in the same basic block); None when the loops cannot be read. A pipelined
    GEMM main loop waits with one group still in flight (`0x1`), so the tensor cores run while the next K step is
    issued; a drain right after the group serializes them, K step by K step. ptxas injects one when the loop reads
    the accumulator registers of an in-flight wgmma (its note C7517), as the fp32 promotion of FP8 partial sums
    does; attention's loop drains by design (softmax reads S = QK^T before P·V). A drain after a branch (a
    persistent kernel's epilogue, once per tile) is not counted."""
    return mma_loop_counts(sass)["mma_drains_in_loops"]


def zero_started_mmas_in_loops(sass: str):
    """How many wgmmas inside a loop start from a zero accumulator (`RZ, !UPT`): a fresh partial sum every K step,
    which the loop then adds to its fp32 accumulator (the promotion of FP8 partial sums, `max_num_imprecise_acc`).
    None when the loops cannot be read."""
    return mma_loop_counts(sass)["zero_started_mmas_in_loops"]


# griddepcontrol.wait (programmatic dependent launch, kernels/pdl.py), and the instructions that touch global memory
# (loads, stores, atomics, async and TMA copies, tensor-map updates; LDC reads the kernel's parameters)
PDL_WAIT = "ACQBULK"
GLOBAL_MEMORY = {"LDG", "STG", "LD", "ST", "LDGSTS", "ATOM", "ATOMG", "RED", "REDG", "UTMALDG", "UTMASTG", "UTMAREDG",
                 "UBLKCP", "UBLKRED", "UBLKPF", "UTMAPF", "UTMACCTL", "UTMACMDFLUSH", "CCTL"}


def pdl_wait_first(ops) -> bool:
    """Whether a grid-dependency wait comes before the first instruction that touches global memory (`ops`:
    opcodes() of the kernel): what makes a kernel launched with PDL safe."""
    for op in ops:
        if op == PDL_WAIT:
            return True
        if op in GLOBAL_MEMORY:
            return False
    return False
