"""The `audit labels` step: confident learning on a cv run's out-of-fold probabilities.

Reads like what it does: check the run is a finished cv run (only its probabilities are
out-of-sample) -> read its OOF table -> rank the suspects (aigc.audit) -> log them, the
counts per class, a gallery grouped by given -> suggested class, and fix files ready for
`data.exclude_ids` / `data.relabel`, in an audit run nested under the cv run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aigc import audit, oof, pages, tracking
from aigc.config import Config
from aigc.data import load_data
from aigc.errors import UserError

GALLERY_PER_PAIR = 24  # thumbnails per given -> suggested pair: the page stays small on 160k images
CV_RUN = "aigc.cv_run"  # tag of an audit run: the cv run whose OOF probabilities it audited


def audit_labels(data_dir: str | Path, config: Config, run_id: str) -> dict:
    """Rank likely mislabelled train/val images of `data_dir` by `run_id`'s out-of-fold probabilities."""
    tracking.connect(config.tracking)
    _check_out_of_sample(run_id)
    table = tracking.load_probabilities(run_id)
    dataset, cache = load_data(data_dir, config.data)
    where = {image_id: (name, row) for name in ("train", "val") if name in dataset.splits
             for row, image_id in enumerate(dataset.splits[name].ids)}
    ids = table["id"].astype(str).tolist()
    missing = [image_id for image_id in ids if image_id not in where]
    if missing:
        raise UserError(f"run {run_id}'s out-of-fold ids are not all in {data_dir} (e.g. {missing[0]!r}, "
                        f"{len(missing)} in all); pass the --data folder the cv run used")
    labels = table["label"].to_numpy()
    splits = [where[image_id][0] for image_id in ids]
    suspects = audit.label_suspects(ids, splits, labels, oof.probabilities_of(table), dataset.class_names)
    counts = audit.suspect_counts(suspects, labels, dataset.class_names)

    with tracking.run("audit", f"audit-labels-{run_id[:8]}", parent_id=run_id) as active:
        tracking.set_tags({CV_RUN: run_id, "aigc.audit": "labels", "aigc.dataset_digest": cache.digest,
                           "mlflow.note.content": _summary(run_id, suspects, len(ids))})
        tracking.log_params({"data_dir": str(Path(data_dir).resolve()), "cv_run": run_id, "method": "cleanlab "
                             "find_label_issues, ranked by self-confidence"})
        tracking.log_metrics({"label_suspects": len(suspects), "label_suspect_fraction": len(suspects) / len(ids)})
        tracking.log_table(suspects, "audit/label_suspects.csv")
        tracking.log_table(counts, "audit/label_suspects_per_class.csv")
        tracking.log_text(_gallery(suspects, where, cache), "audit/label_suspects.html")
        # ready-made fixes: pass one as data.exclude_ids or data.relabel (after a look at the gallery)
        tracking.log_table(suspects[["id"]], "fixes/exclude_ids.csv")
        tracking.log_table(suspects[["id", "suggested_label"]].rename(columns={"suggested_label": "label"}),
                           "fixes/relabel.csv")
        audit_id = active.info.run_id
    return {"run_id": audit_id, "cv_run": run_id, "images": len(ids), "suspects": suspects, "counts": counts}


def _check_out_of_sample(run_id: str) -> None:
    """Only a finished cv run's OOF table was predicted by models that never trained on those images."""
    run = tracking.get_run(run_id)
    kind = run.data.tags.get("aigc.kind", "unknown")
    if kind != "cv":
        raise UserError(f"run {run_id} is a {kind} run: its validation probabilities come from models that "
                        "trained on the other images, not out-of-fold predictions of every image; run "
                        "`aigc cv --data DIR` and pass that cv run's id to `aigc audit labels --run`")
    if not run.data.tags.get("aigc.model_uri"):
        raise UserError(f"cv run {run_id} did not finish (no out-of-fold table yet); resume it with "
                        f"`aigc cv --resume {run_id}` first")


def _gallery(suspects: pd.DataFrame, where: dict, cache) -> str:
    sections = []
    for (given, suggested), rows in suspects.groupby(["given_label", "suggested_label"], sort=True):
        rows = rows.head(GALLERY_PER_PAIR)
        items = []
        for image_id, confidence in zip(rows["id"], rows["self_confidence"]):
            split, row = where[image_id]
            items.append((np.asarray(cache.images(split)[row]), f"{split}/{image_id} p(given)={confidence:.3f}"))
        sections.append((f"given {given} -> suggested {suggested}", items))
    return pages.gallery_html("Label suspects", sections, f"{len(suspects)} suspects, most suspicious first in each "
                              f"group (at most {GALLERY_PER_PAIR} shown per group).")


def _summary(run_id: str, suspects: pd.DataFrame, images: int) -> str:
    return (f"Label audit of cv run {run_id}: {len(suspects)} of {images} images look mislabelled (confident "
            "learning on out-of-fold probabilities). Look at audit/label_suspects.html, then pass "
            "fixes/exclude_ids.csv as data.exclude_ids or fixes/relabel.csv as data.relabel in the next run.")
