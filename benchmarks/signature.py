"""What the data arguments of an AOT signature (tests/kernels/aot_compile.py's contract) hold, read without compiling
or importing anything: the compile check and the static report classify variants by it (bf16, fp32, FP8), and
importing the compile check would turn the interpreter off for the importing process."""


def element_types(signature, counters=True) -> list:
    """The element types of a signature's data arguments, in order, once each: pointers ("*bf16" -> "bf16") and host
    tensor descriptors ("tensordesc<bf16[128, 64]>" -> "bf16"); counters=False leaves out int32 pointers (split-K
    counters)."""
    kinds = []
    for t in signature.values():
        if isinstance(t, str) and t.startswith("*"):
            kinds.append(t[1:])
        elif isinstance(t, str) and t.startswith("tensordesc<"):
            kinds.append(t[len("tensordesc<"):].split("[", 1)[0])
    return list(dict.fromkeys(k for k in kinds if counters or k != "i32"))
