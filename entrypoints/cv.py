"""MLflow entry point `cv`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["cv", *sys.argv[1:]])
