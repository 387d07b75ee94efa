"""MLflow entry point `audit`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["audit", *sys.argv[1:]])
