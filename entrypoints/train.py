"""MLflow entry point `train`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["train", *sys.argv[1:]])
