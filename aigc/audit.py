"""Data audits: label noise (confident learning) and near-duplicates (perceptual hashes); no MLflow here.

`label_suspects` ranks the images whose given label disagrees with out-of-fold predictions
(cleanlab's confident learning: per-class thresholds, so a hard class is not all flagged).
`near_duplicate_groups` links images whose 64-bit hashes differ in at most `distance` bits
by multi-index hashing: split each hash into distance + 1 pieces; two hashes within the
distance agree exactly on at least one piece (pigeonhole), so only images sharing a piece
are compared, never all pairs. Their galleries are built by aigc.pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SUSPECT_COLUMNS = ["rank", "id", "split", "given_label", "suggested_label", "self_confidence",
                   "suggested_confidence"]


def label_suspects(ids: Sequence[str], splits: Sequence[str], labels: np.ndarray,
                   probabilities: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Likely mislabelled images, most suspicious first (lowest probability of the given label).

    `probabilities` must be out-of-sample (a model that trained on an image has memorised its label).
    """
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # cleanlab wants rows summing to 1
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    suggested = probabilities[ranked].argmax(axis=1)
    return pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1),
        "id": [ids[i] for i in ranked],
        "split": [splits[i] for i in ranked],
        "given_label": [class_names[labels[i]] for i in ranked],
        "suggested_label": [class_names[s] for s in suggested],
        "self_confidence": probabilities[ranked, labels[ranked]].round(6),
        "suggested_confidence": probabilities[ranked, suggested].round(6),
    }, columns=SUSPECT_COLUMNS)


def suspect_counts(suspects: pd.DataFrame, labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class: images given that label, how many of them are suspects, and where the suspects would go."""
    given = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    rows = []
    for label, name in enumerate(class_names):
        mine = suspects[suspects["given_label"] == name]
        rows.append({"class": name, "images": int(given[label]), "suspects": len(mine),
                     "suspect_fraction": round(len(mine) / max(int(given[label]), 1), 4),
                     "suggested_instead": "; ".join(f"{k}: {v}" for k, v in
                                                   mine["suggested_label"].value_counts().sort_index().items())})
    return pd.DataFrame(rows)


# --- near-duplicates ---------------------------------------------------------------------------

def near_duplicate_groups(keys: Sequence[str], hashes: np.ndarray, distance: int) -> list[list[str]]:
    """Groups (lists of `keys`, e.g. "train/<id>") of images linked by hashes at most `distance` bits apart.

    Linked transitively (A~B, B~C: one group). Pairs compared: only those sharing a hash piece.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if distance < 0 or len(hashes) < 2:  # -1: the audit is off
        return []
    # Equal hashes are one node: a cluster of look-alikes would otherwise cost its size squared in pairs.
    unique, node = np.unique(hashes, return_inverse=True)
    edges = [(first[close], second[close]) for first, second in _candidate_pairs(unique, distance)
             for close in [np.bitwise_count(unique[first] ^ unique[second]) <= distance]]
    first = np.concatenate([np.zeros(0, np.int64)] + [e[0] for e in edges])
    second = np.concatenate([np.zeros(0, np.int64)] + [e[1] for e in edges])
    label = linked_components(len(unique), first, second)[node.ravel()]
    order = np.argsort(label, kind="stable")
    starts, sizes = np.unique(label[order], return_index=True, return_counts=True)[1:]
    return [[keys[n] for n in order[start:start + size]] for start, size in zip(starts, sizes) if size > 1]


def linked_components(count: int, first, second) -> np.ndarray:
    """The component number of each of `count` nodes joined by the edges first[i]-second[i], linked transitively
    (scipy, in C): the one grouping of copies, exact (aigc.folds) and near."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first), bool), (first, second)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def dataset_near_duplicates(dataset, cache, distance: int) -> list[list[str]]:
    """Near-duplicate groups over every split of a dataset, from the hashes its cache stored."""
    if distance < 0:
        return []
    keys = [f"{name}/{image_id}" for name, split in dataset.splits.items() for image_id in split.ids]
    hashes = np.concatenate([cache.phashes(name) for name in dataset.splits])
    return near_duplicate_groups(keys, hashes, distance)


def _candidate_pairs(hashes: np.ndarray, distance: int):
    """(first, second) index arrays of images that share one of distance + 1 hash pieces exactly."""
    pieces = distance + 1
    bounds = np.linspace(0, 64, pieces + 1).astype(int)
    for low, high in zip(bounds[:-1], bounds[1:]):
        piece = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(piece, kind="stable")
        values, starts, sizes = np.unique(piece[order], return_index=True, return_counts=True)
        for size in np.unique(sizes[sizes > 1]):  # all buckets of one size at once: a (buckets, size) matrix
            members = order[starts[sizes == size][:, None] + np.arange(size)]
            i, j = np.triu_indices(int(size), k=1)
            yield members[:, i].ravel(), members[:, j].ravel()


def group_counts(groups: list[list[str]]) -> dict[str, int]:
    """How many groups stay within one split, and how many join each pair of splits (leaks)."""
    counts = {"near_duplicate_groups": len(groups), "near_duplicate_images": sum(len(g) for g in groups),
              "near_duplicate_groups_within_split": 0}
    for group in groups:
        splits = sorted({key.split("/", 1)[0] for key in group})
        if len(splits) == 1:
            counts["near_duplicate_groups_within_split"] += 1
        for n, a in enumerate(splits):
            for b in splits[n + 1:]:
                name = f"near_duplicate_groups_{a}_{b}"
                counts[name] = counts.get(name, 0) + 1
    return counts
