"""The README's walk-through of the Kaggle loop, run as it is written, on demo data (a smaller config)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_CNN, invoke_cli

NETWORK = "--competition"  # a line that sends to Kaggle: the walk-through's next line records a score by hand


def walk_through() -> list[str]:
    """The lines of the README's `sh` block under "The Kaggle loop, step by step"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The Kaggle loop, step by step", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()


@pytest.mark.slow
def test_the_readmes_walk_through_runs_on_demo_data(store, dataset_factory, tmp_path):
    config = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    config["train"]["epochs"] = 1  # the same loop, with the tests' smallest model: seconds per fold
    config["model"] = {"name": "cnn", "params": TINY_CNN}
    config.setdefault("cv", {})["folds"] = 2  # the README's cv lines take the config's folds
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    names = {"DATA": str(dataset_factory("gic", classes=4, per_class=15)), "CONFIG": str(tmp_path / "demo.yaml")}
    ran = []
    for line in walk_through():
        words = shlex.split(line, comments=True)
        if not words or words[0] == "source" or all("=" in word for word in words) or NETWORK in words:
            continue  # the venv is this interpreter's; DATA and CONFIG are ours; no network here
        words = [re.sub(r"\$(\w+)", lambda m: names[m.group(1)], word) for word in words]
        if words[0] == "aigc":
            result = invoke_cli(*words[1:])
            assert result.exit_code == 0, f"{line}\n{result.output}"
            output = result.output
        else:  # mlflow's own command line, as a user runs it
            done = subprocess.run([str(Path(sys.executable).with_name(words[0])), *words[1:]], capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
            output = done.stdout
        printed = re.search(r"prints: (\w+) run (\w+)", line)
        if printed:  # the id the next steps name
            kind, name = printed.groups()
            names[name] = re.search(rf"{kind} run ([0-9a-f]{{32}})", output).group(1)
        ran.append(words[0:2])
    assert len(ran) == 10 and Path("submission.csv").read_text().startswith("Image,Class\n")
    assert Path("fixes/relabel.csv").is_file()
