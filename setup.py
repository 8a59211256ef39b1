"""Packaging for vit-fast: the `vit_fast` runtime with its Triton kernels (`vit_fast.kernels`), and the `benchmarks`
harness."""
from setuptools import find_packages, setup

setup(
    name="vit-fast",
    version="0.1.0",
    description="Triton-kernel accelerated Vision Transformer inference, a drop-in for timm and Hugging Face ViTs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vit_fast", "vit_fast.*", "benchmarks", "benchmarks.*"]),
    package_data={"vit_fast": ["assets/*"]},
    install_requires=["torch>=2.4", "triton>=3.4", "numpy", "safetensors", "pillow", "tqdm"],
    extras_require={
        "bench": ["matplotlib", "pytest-benchmark"],
        "serve": ["ray[serve,data]>=2.40", "pyarrow"],
        "hub": ["huggingface_hub>=0.24"],  # checkpoints named by Hub repository (vit_fast/loading/hub.py)
        "test": [
            "pytest",
            "pytest-benchmark",
            "pytest-timeout",
            "transformers>=4.40",
            "huggingface_hub>=0.24",
            "matplotlib",
            "ray[serve,data]>=2.40",
            "pyarrow",
        ],
    },
    entry_points={"console_scripts": ["vit-fast=vit_fast.cli:main"]},
)
