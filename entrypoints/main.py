"""MLflow entry point `main`: the whole pipeline (preprocess, train, promote, predict)."""

import sys

from aigc.cli import main

main(["pipeline", *sys.argv[1:]])
