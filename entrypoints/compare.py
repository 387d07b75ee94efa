"""MLflow entry point `compare`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["compare", *sys.argv[1:]])
