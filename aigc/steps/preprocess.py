"""The `preprocess` step: validate a dataset, build its decoded cache, describe it in MLflow."""

from __future__ import annotations

from pathlib import Path

from aigc import audit, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc.data import report as data_report
from aigc.data.fixes import fix_tags, read_fixes


def preprocess(data_dir: str | Path, config: Config) -> dict:
    """Check every image (nothing logged if one is bad), cache it, and log the dataset report."""
    dataset, cache = load_data(data_dir, config.data)
    fixes = read_fixes(dataset, config.data.exclude_ids, config.data.relabel)  # a bad fix file is refused now
    report = cache.report
    distance = config.data.near_duplicate_distance
    near = audit.dataset_near_duplicates(dataset, cache, distance)  # from hashes the cache stored: no decoding
    tracking.connect(config.tracking)
    with tracking.run("preprocess", f"preprocess-{dataset.layout.name}") as active:
        # the counts describe the data: params and tags, not metrics (the UI would chart them before the curves)
        counts = {f"images_{split}": count for split, count in report["counts"].items()}
        tracking.log_params({
            "data_dir": str(Path(data_dir).resolve()), "layout": dataset.layout.name,
            "image_size": config.data.image_size, "num_classes": dataset.num_classes,
            "limit": config.data.limit, **counts, "converted_to_rgb": report["converted_to_rgb"],
            "resized": report["resized"], "duplicate_groups": len(report["duplicates"]),
            "fixes_excluded": len(fixes.exclude), "fixes_relabelled": len(fixes.relabel),
        })
        # the whole dataset's digest (the pipeline's cache key) and each split's, as its dataset shows it
        tracking.set_tags({"aigc.layout": dataset.layout.name, "aigc.dataset_digest": cache.digest,
                           tracking.CONFIG_DIGEST: config.digest("data"),
                           **{f"aigc.{name}_digest": cache.split_digest(name) for name in dataset.splits},
                           **fix_tags(config.data.exclude_ids, config.data.relabel)})
        for name, split in dataset.splits.items():  # named, digested and placed as the train step logs them
            tracking.log_dataset(split.ids, split.labels, cache.split_digest(name), str(dataset.root),
                                 f"{dataset.root.name}-{name}", context=tracking.DATASET_CONTEXTS.get(name, name))
        tracking.describe_run(_description(dataset, report, cache.digest))
        tracking.log_figure(data_report.class_distribution_figure(dataset, report), "class_distribution.png")
        tracking.log_figure(data_report.sample_grid(dataset, cache, config.train.seed), "samples.png")
        tracking.log_table(data_report.summary_table(report), "summary.csv")
        tracking.log_table(data_report.duplicates_table(report), "duplicates.csv")
        tracking.log_dict(report, "report.json")
        _log_near_duplicates(near, dataset, cache, distance)
        run_id = active.info.run_id
    return {"run_id": run_id, "digest": cache.digest, "cache": str(cache.path), **report, "near_duplicates": near}


def _description(dataset, report: dict, digest: str) -> str:
    counts = ", ".join(f"{split} {count}" for split, count in report["counts"].items())
    return (f"Dataset {dataset.root.name} ({dataset.layout.name} layout, {dataset.num_classes} classes): {counts} "
            f"images; {report['converted_to_rgb']} converted to RGB, {report['resized']} resized, "
            f"{len(report['duplicates'])} duplicate groups (duplicates.csv). Digest {digest}.")


def _log_near_duplicates(groups, dataset, cache, distance: int) -> None:
    """Counts within and across splits (params: they describe the data), the groups as a table, and their
    gallery (the audit off: nothing)."""
    if distance < 0:
        return
    tracking.log_params(audit.group_counts(groups))
    tracking.log_table(data_report.near_duplicates_table(groups), "near_duplicates.csv")
    tracking.log_text(data_report.near_duplicates_gallery(groups, dataset, cache, distance), "near_duplicates.html")
