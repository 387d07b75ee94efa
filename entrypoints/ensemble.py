"""MLflow entry point `ensemble`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["ensemble", *sys.argv[1:]])
