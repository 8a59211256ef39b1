"""Reading a kernel's SASS (nvdisasm's output): opcode counts, and where its spill instructions sit.

The static report (benchmarks/kernels_static.py, through tests/kernels/aot_compile.inspect_compiled) tells a cold
spill, a value or two ptxas parks in local memory across a loop, from spills that run on every iteration. Kept
apart from aot_compile, which clears TRITON_INTERPRET when imported, so tests can read SASS text in-process.
"""
import re

# One instruction line: `/*0820*/  @!P0 STL.64 [R1], R0 ;` -> address (optional here), opcode, operands.
_INSTRUCTION = re.compile(r"^\s*(?:/\*([0-9a-f]+)\*/)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(.*)$")
_LABEL = re.compile(r"^\s*(\.L\w+):")
_TARGET = re.compile(r"`\((\.L\w+)\)")
_JUMPS = ("BRA", "BRX", "JMP", "JMX")  # a loop's back edge is one of these; CALL/RET leave the function body
_FUNCTION = re.compile(r"^\s*\.type\s+\S+,\s*@function")  # the kernel's, then one per subroutine it calls


def opcodes(sass: str) -> list:
    """The opcode of every instruction, in order (modifiers dropped: `STL.64` -> `STL`)."""
    return [m[2] for m in map(_INSTRUCTION.match, sass.splitlines()) if m]


def spills_in_loops(sass: str):
    """How many STL/LDL instructions sit inside a loop; None when that cannot be read, so a caller fails closed.

    A loop is the address range from a label to a later branch back to it. A spill outside every loop (a value
    parked across the main loop, stored before it and loaded after) costs its accesses once per thread; one inside
    a loop costs them on every iteration. None when a spill exists and: an instruction line has no address, a jump
    has no label target (an indirect branch could close a loop), or a spill sits in a subroutine the kernel calls
    (`__cuda_sm20_div_s64` and kin: it runs as often as its callers)."""
    labels, spills, back_edges, pending = {}, [], [], []
    unreadable, any_spill, functions = False, False, 0
    for line in sass.splitlines():
        if _FUNCTION.match(line):
            functions += 1
            continue
        label = _LABEL.match(line)
        if label:
            pending.append(label[1])
            continue
        inst = _INSTRUCTION.match(line)
        if not inst:
            continue
        opcode = inst[2]
        any_spill |= opcode in ("STL", "LDL")
        if inst[1] is None:
            unreadable = True
            continue
        address = int(inst[1], 16)
        for name in pending:
            labels[name] = address
        pending = []
        if opcode in ("STL", "LDL"):
            spills.append(address)
            unreadable |= functions > 1
        elif opcode in _JUMPS:
            target = _TARGET.search(inst[3])
            if target is None:
                unreadable = True
            elif target[1] in labels:  # a label seen already: a branch back
                back_edges.append((labels[target[1]], address))
    if not any_spill:
        return 0
    if unreadable:
        return None
    return sum(1 for a in spills if any(lo <= a <= hi for lo, hi in back_edges))
