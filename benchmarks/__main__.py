"""`python -m benchmarks`: the benchmark harness (see benchmarks/cli.py for the options)."""
import sys

from .cli import main

sys.exit(main())
