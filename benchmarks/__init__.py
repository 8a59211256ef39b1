"""Benchmark harness of vit-fast: times every backend (eager, sdpa, torch.compile, vit_fast's Triton kernels, timm,
Hugging Face) on the same weights and inputs, and reports throughput, latency, TFLOP/s, MFU, memory and accuracy.

Entry points: `python -m benchmarks` (cli.py), `python -m benchmarks.report DIR` (report.py),
`python -m benchmarks.readme` (readme.py), `pytest benchmarks/` (kernel microbenchmarks),
`benchmarks/gpu_steps.sh lease SECONDS` on a GPU machine: the GPU test subset, headline.py, breakdown.py and the grid
slices in priority order within one device command (or `gpu_steps.sh STEP` for one of them), and
`python -m benchmarks.store_lease runs.tar.gz` here to commit what it brought back (NOTES.md, "GPU session plan").
"""
