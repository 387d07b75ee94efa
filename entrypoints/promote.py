"""MLflow entry point `promote`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["promote", *sys.argv[1:]])
