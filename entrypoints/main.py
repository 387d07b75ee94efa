"""MLflow entry point `main`: the whole pipeline (preprocess, train or cv, promote, predict)."""

import sys

from aigc.cli import main

main(["pipeline", *sys.argv[1:]])
