"""Reading a kernel's SASS (nvdisasm's output) beyond opcode counts: where its spill instructions sit.

The static report (benchmarks/kernels_static.py, through tests/kernels/aot_compile.inspect_compiled) tells a cold
spill, a value or two ptxas parks in local memory across a loop, from spills that run on every iteration. Kept
apart from aot_compile, which clears TRITON_INTERPRET when imported, so tests can read SASS text in-process.
"""
import re


def spills_in_loops(sass: str) -> int:
    """STL/LDL instructions inside a loop of the disassembly: a loop is the address range from a label to a later
    branch back to it. A spill outside every loop (a value parked across the main loop, stored once before it and
    loaded once after) costs one store and one load per thread; one inside a loop costs that on every iteration."""
    labels, spills, back_edges, pending = {}, [], [], []
    for line in sass.splitlines():
        label = re.match(r"^\s*(\.L\w+):", line)
        if label:
            pending.append(label.group(1))
            continue
        inst = re.match(r"^\s*/\*([0-9a-f]+)\*/\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(.*)", line)
        if not inst:
            continue
        address, opcode, rest = int(inst.group(1), 16), inst.group(2), inst.group(3)
        for name in pending:
            labels[name] = address
        pending = []
        if opcode in ("STL", "LDL"):
            spills.append(address)
        target = re.search(r"`\((\.L\w+)\)", rest)
        if opcode.startswith("BRA") and target and target.group(1) in labels:  # seen already: a backward branch
            back_edges.append((labels[target.group(1)], address))
    return sum(1 for a in spills if any(lo <= a <= hi for lo, hi in back_edges))
