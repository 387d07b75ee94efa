"""MLflow entry point `tune`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["tune", *sys.argv[1:]])
