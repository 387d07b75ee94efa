"""MLflow entry point `preprocess`: parse, call aigc, nothing else."""

import sys

from aigc.cli import main

main(["preprocess", *sys.argv[1:]])
