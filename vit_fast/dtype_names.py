"""The dtype names every command line accepts, whatever spelling a command prints.

Each command has its own canonical spelling (`predict --dtype bfloat16`, `validate --dtype bf16`, `bench --dtypes
float8`), and users type the one they saw last. So every `--dtype`/`--dtypes` takes any spelling of a dtype it
supports and hands the command its own canonical one: `bf16`, `bfloat16`; `fp16`, `float16`, `half`; `fp32`,
`float32`, `float`; `fp8`, `float8`, `float8_e4m3fn`.
"""
from __future__ import annotations

import argparse

# dtype -> its spellings; the first is torch's name (FP8: the project's)
SPELLINGS = {
    "float32": ("float32", "fp32", "float"),
    "float16": ("float16", "fp16", "half"),
    "bfloat16": ("bfloat16", "bf16"),
    "fp8": ("fp8", "float8", "float8_e4m3fn"),
}
_KIND = {s: kind for kind, names in SPELLINGS.items() for s in names}


def kind_of(text) -> str | None:
    """The dtype of SPELLINGS a name spells (any case), None for anything else."""
    return _KIND.get(text.strip().lower()) if isinstance(text, str) else None


def canonical(text: str, names: dict) -> str:
    """`text` (any spelling) as the command's own name: `names` maps a dtype of SPELLINGS to it, in the order the
    command lists them. ValueError (one line: what it takes, what came) for a dtype the command does not take."""
    kind = kind_of(text)
    if kind not in names:
        raise ValueError(f"expected one of {', '.join(names.values())}, got {text!r}")
    return names[kind]


def argument(*accepted: str):
    """An argparse `type` for a `--dtype` whose canonical names are `accepted` (spellings of SPELLINGS' dtypes):
    any spelling of those dtypes comes back as the accepted name."""
    names = {_KIND[a]: a for a in accepted}

    def parse(text: str) -> str:
        try:
            return canonical(text, names)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "dtype"  # argparse names the type in some messages
    return parse
