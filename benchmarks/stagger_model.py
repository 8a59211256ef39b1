"""The model behind kernels/stagger.py: two persistent programs on one SM, each walking its tiles, sharing the
tensor cores during their main loops and not during their epilogues; how long a pair of tiles takes with and
without a start offset. benchmarks/NOTES.md ("Staggered co-resident programs") quotes its table.

Each program alternates a main loop (W of tensor-core work: W long alone, 2W while the other program's main loop
runs too) and an epilogue (E, on the CUDA cores, whatever the other does; drawn uniformly within ±jitter/2 of E).
The simplifications are the model's bounds: the two share the tensor cores perfectly, the main loop itself is not
slowed by anything the other program does, and the epilogue is ALU time. A GPU gains less than the model does.

`python -m benchmarks.stagger_model` prints, per (W, E) and epilogue jitter, the unstaggered pair against 2W + E
(lockstep) and the staggered pair against the unstaggered one, for a few start offsets of the second program.
"""
import argparse
import random


def simulate(w: float, e: float, delay: float, tiles: int = 18, jitter: float = 0.0, seed: int = 0,
             dt: float = 0.001) -> float:
    """Time for both programs to finish `tiles` tiles each, the second starting `delay` late (time steps of dt)."""
    rng = random.Random(seed)
    state = [["main", w, 0], ["wait", delay, 0]]  # phase, time or work left in it, tiles done
    t = 0.0
    while min(s[2] for s in state) < tiles:
        sharing = sum(1 for s in state if s[0] == "main" and s[2] < tiles)
        for s in state:
            if s[2] >= tiles:
                continue
            s[1] -= dt / sharing if s[0] == "main" else dt
            if s[1] <= 0:
                if s[0] == "main":
                    s[0], s[1] = "epilogue", e * (1 + jitter * (rng.random() - 0.5))
                else:
                    s[2] += s[0] == "epilogue"
                    s[0], s[1] = "main", w
        t += dt
    return t


def ratios(w: float, e: float, jitter: float, offsets=(1.0,), seeds: int = 3, tiles: int = 27) -> tuple:
    """(unstaggered pair / (2W + E), [staggered / unstaggered for each offset, in multiples of W]), means over
    `seeds` draws of the jitter."""
    def mean(delay):
        return sum(simulate(w, e, delay, tiles, jitter, s, dt=0.002) for s in range(seeds)) / seeds

    plain = mean(0.0)
    return plain / tiles / (2 * w + e), [mean(k * w) / plain for k in offsets]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stagger_model", description=__doc__.splitlines()[0])
    p.add_argument("--w", type=float, default=4.15, help="one tile's main loop alone, µs (B/16's 128x128x768 at "
                   "the measured 802 TFLOP/s)")
    p.add_argument("--e", type=float, nargs="+", default=[3.2, 5.5, 7.6],
                   help="epilogues, µs (B/16's QKV and FC1 bounds, third lease; FC1 with the fitted GELU)")
    p.add_argument("--jitter", type=float, nargs="+", default=[0.0, 0.2, 0.4],
                   help="the epilogue's spread, as a fraction of E (0.2: within ±10 %%)")
    p.add_argument("--offsets", type=float, nargs="+", default=[0.75, 0.9, 1.0, 1.2],
                   help="the second program's start, in multiples of W")
    p.add_argument("--tiles", type=int, default=27, help="tiles per program (B/16 b256: QKV 27, FC1 36)")
    args = p.parse_args(argv)
    heads = " | ".join(f"staggered {k:g}W" for k in args.offsets)
    print(f"| W µs | E µs | epilogue jitter | unstaggered / (2W+E) | {heads} |")
    print("|---" * (4 + len(args.offsets)) + "|")
    for e in args.e:
        for j in args.jitter:
            plain, staggered = ratios(args.w, e, j, args.offsets, tiles=args.tiles)
            cells = " | ".join(f"{r:.2f}" for r in staggered)
            print(f"| {args.w} | {e} | ±{j * 50:.0f} % | {plain:.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
