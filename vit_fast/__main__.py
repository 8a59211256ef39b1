"""`python -m vit_fast` runs the `vit-fast` command."""
import sys

from .cli import main

sys.exit(main())
