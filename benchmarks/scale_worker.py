"""One scale run, in a fresh process: preprocess + one training epoch + predict, timed per stage.

`python -m benchmarks.scale_worker DATA_DIR CONFIG OVERRIDES_JSON OUT_JSON` (run by benchmarks.scale).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from benchmarks.timing import Stopwatch

STATUS = Path("/proc/self/status")  # Linux: RssAnon / VmHWM; elsewhere only the parent's ru_maxrss


class MemorySampler(threading.Thread):
    """Peak RSS and anonymous RSS per stage: RSS also counts the cache's memory-mapped file pages."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.stage, self.stop = interval, "start", threading.Event()
        self.peaks: dict[str, dict[str, int]] = {}

    def run(self):
        while not self.stop.wait(self.interval):
            peak = self.peaks.setdefault(self.stage, {"rss": 0, "anon": 0})
            peak["rss"] = max(peak["rss"], status_bytes("VmRSS"))
            peak["anon"] = max(peak["anon"], status_bytes("RssAnon"))


def status_bytes(key: str) -> int:
    """A `kB` line of /proc/self/status in bytes (0 where there is none)."""
    if not STATUS.is_file():
        return 0
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main(data_dir: str, config_path: str, overrides: str, out: str) -> None:
    from aigc.config import load
    from aigc.steps.predict import predict
    from aigc.steps.preprocess import preprocess
    from aigc.steps.train import train

    config = load(config_path, json.loads(overrides))
    sampler = MemorySampler()
    sampler.start()
    stages = {}

    def timed(stage, step):
        sampler.stage = stage
        with Stopwatch() as watch:
            result = step()
        stages[stage] = watch.seconds
        return result

    timed("preprocess", lambda: preprocess(data_dir, config))
    run_id = timed("train", lambda: train(data_dir, config)["run_id"])
    timed("predict", lambda: predict(data_dir, config, model=run_id, out=Path(out).with_suffix(".csv")))
    sampler.stop.set()
    Path(out).write_text(json.dumps({
        "stage_seconds": stages, "stage_peaks": sampler.peaks, "peak_rss_bytes": peak_rss(),
        "peak_anon_rss_bytes": max((p["anon"] for p in sampler.peaks.values()), default=0)}))


def peak_rss() -> int:
    """This process's peak RSS. Not ru_maxrss on Linux: it keeps the forking parent's RSS across exec."""
    import resource

    return status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main(*sys.argv[1:])
