"""MLflow entry point `predict`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["predict", *sys.argv[1:]])
