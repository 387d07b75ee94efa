"""Results as JSON, a markdown table (the README's Performance section) and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.figures import Result
from benchmarks.machine import summary

GIB = 2**30
MET = {True: "yes", False: "**no**", None: "—"}


def write(results: list[Result], machine: dict, out: Path, command: str) -> list[Path]:
    """results.json, results.md and results.png in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "results.png"]
    paths[0].write_text(json.dumps({"command": command, "machine": machine,
                                    "results": [r.to_dict() for r in results]}, indent=2, default=float))
    paths[1].write_text(markdown(results, machine, command))
    plot(results, paths[2])
    return paths


def markdown(results: list[Result], machine: dict, command: str) -> str:
    lines = [(f"Measured by `{command}` on {machine['date'][:10]} ({machine['git_commit'][:8] or 'no commit'}): "
              f"{summary(machine)}."), "", "| Figure | Measured | Target | Met |", "|---|---|---|---|"]
    for result in results:
        lines += [f"| {f.label} | {f.value_text} {f.detail} | {f.target_text} | {MET[f.met]} |" for f in result.figures]
        if result.skipped or result.error:
            lines.append(f"| {result.name} | skipped: {result.skipped or 'failed: ' + result.error} | | — |")
    scale = next((r for r in results if r.name == "scale" and r.data.get("runs")), None)
    if scale:
        lines += ["", scale_table(scale)]
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes if r.name != "scale"]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def scale_table(result: Result) -> str:
    """One row per size: wall time, stage times, peak RSS."""
    rows = ["Scale (small CNN, 1 epoch, flip-only augmentation; each size in a fresh process):", "",
            "| Images | Wall s | s / 1k images | preprocess s | train s | predict s | Peak RSS GiB | Anon. RSS GiB |",
            "|---|---|---|---|---|---|---|---|"]
    for r in result.data["runs"]:
        s = r["stage_seconds"]
        rows.append(f"| {r['images']:,} | {r['wall_seconds']:.0f} | {1000 * r['wall_seconds'] / r['images']:.2f} | "
                    f"{s['preprocess']:.0f} | {s['train']:.0f} | {s['predict']:.0f} | "
                    f"{r['peak_rss_bytes'] / GIB:.2f} | {r['peak_anon_rss_bytes'] / GIB:.2f} |")
    return "\n".join(rows)


def plot(results: list[Result], path: Path) -> None:
    """Left: every ratio against its target; right: scale wall time and peak RSS by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ratios, scale) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    plot_ratios(ratios, [f for r in results for f in r.figures if f.unit == "x" and f.value is not None])
    runs = next((r.data["runs"] for r in results if r.name == "scale" and r.data.get("runs")), [])
    plot_scale(scale, runs)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_ratios(axis, figures) -> None:
    import matplotlib.ticker

    if not figures:
        axis.set_axis_off()
        return
    rows = range(len(figures))
    axis.barh(rows, [f.value for f in figures], color=["tab:green" if f.met else "tab:red" for f in figures])
    axis.scatter([f.target for f in figures], rows, marker="|", s=400, color="black", label="target", zorder=3)
    axis.set_yticks(list(rows), [f.key for f in figures])
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.5, 1, 2, 5, 10]))
    axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("ratio (log scale); green: target met")
    axis.invert_yaxis()
    axis.legend(loc="lower right")


def plot_scale(axis, runs: list[dict]) -> None:
    if not runs:
        axis.set_axis_off()
        return
    images = [r["images"] / 1000 for r in runs]
    axis.plot(images, [r["wall_seconds"] for r in runs], "o-", label="wall time")
    axis.set_xlabel("images (thousands)")
    axis.set_ylabel("seconds")
    axis.set_ylim(bottom=0)
    memory = axis.twinx()
    memory.plot(images, [r["peak_rss_bytes"] / GIB for r in runs], "s--", color="tab:orange", label="peak RSS")
    memory.axhline(3, color="tab:orange", linewidth=0.8, linestyle=":")
    memory.set_ylim(bottom=0)
    memory.set_ylabel("peak RSS, GiB (target 3)")
    axis.set_title("scale: preprocess + 1 epoch + predict")
