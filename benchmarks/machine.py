"""What the figures were measured on: CPU, cores, memory, load, library versions, commit."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from pathlib import Path

import psutil

PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "tf-keras", "numpy")


def describe() -> dict:
    from aigc.tracking.log import git_commit

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # others' work skews absolute numbers
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: version for name in PACKAGES if (version := installed(name))},
        "git_commit": git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def summary(machine: dict) -> str:
    """One line for the table's caption."""
    v = machine["versions"]
    tensorflow = v.get("tensorflow-cpu") or v.get("tensorflow", "?")
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['ram_gib']} GiB RAM; "
            f"TensorFlow {tensorflow}, Keras {v.get('keras', '?')}, MLflow {v.get('mlflow', '?')}, "
            f"tf_keras {v.get('tf-keras', 'absent')}; Python {machine['python']}; "
            f"load average {machine['load_average_at_start'][0]} at start")
