"""Benchmark harness of vit-fast: times every backend (eager, sdpa, torch.compile, vit_fast's Triton kernels, timm,
Hugging Face) on the same weights and inputs, and reports throughput, latency, TFLOP/s, MFU, memory and accuracy.

Entry points: `python -m benchmarks` (cli.py), `python -m benchmarks.report DIR` (report.py),
`python -m benchmarks.readme` (readme.py), `pytest benchmarks/` (kernel microbenchmarks),
`benchmarks/gpu_steps.sh STEP` on a GPU machine, one command per step inside a 10-minute limit (the GPU test
subset, headline.py, breakdown.py, grid slices, merge; NOTES.md, "GPU session plan").
"""
