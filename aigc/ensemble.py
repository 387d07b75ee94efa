"""Ensembles from members' probabilities: votes, weighted votes, greedy selection, CSV merging.

Everything works on arrays of validation, out-of-fold (aigc.oof.align_oof) or test
probabilities, so choosing an ensemble never re-runs a model. `EnsembleModel` is the
loaded form of the logged, declarative description (member model URIs, weights,
method, test-time transforms: no pickled code), which `description` builds.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from aigc.config import DataConfig
from aigc.errors import UserError, first_rows, short
from aigc.inputs import read_capped
from aigc.tta import check_names

METHODS = ("hard", "soft", "weighted", "greedy")
ENSEMBLE_FILE = "ensemble.json"  # the file a logged ensemble model holds: what marks it as one
TIE_BREAK = 1e-9  # small enough never to overturn a vote, large enough to order tied classes


def combine(probabilities: list[np.ndarray], weights, method: str) -> np.ndarray:
    """The ensemble's class scores (rows sum to 1); argmax is its prediction."""
    stack = np.stack(probabilities)  # members x images x classes
    weights = np.asarray(weights, dtype=float) / np.sum(weights)
    mean = np.tensordot(weights, stack, axes=1)
    if method != "hard":
        return mean
    votes = np.zeros_like(mean)
    for weight, member in zip(weights, stack):
        votes[np.arange(len(member)), member.argmax(axis=1)] += weight
    # a tie between classes with equal votes goes to the larger summed probability
    scores = votes + TIE_BREAK * mean
    return scores / scores.sum(axis=1, keepdims=True)


def greedy_weights(probabilities: list[np.ndarray], labels: np.ndarray, score, rounds: int = 25) -> np.ndarray:
    """Forward selection with replacement (Caruana et al., 2004): member counts as weights.

    Starts from the best single member and keeps the best ensemble seen, so it never
    scores below the best member on the data it was chosen on.
    """
    counts = np.zeros(len(probabilities))
    total = np.zeros_like(probabilities[0])
    best_counts, best_score = None, -np.inf
    for _ in range(rounds):
        trials = [score(labels, ((total + p) / (counts.sum() + 1)).argmax(axis=1)) for p in probabilities]
        pick = int(np.argmax(trials))  # ties go to the earlier member: deterministic
        counts[pick] += 1
        total += probabilities[pick]
        if trials[pick] > best_score:
            best_counts, best_score = counts.copy(), trials[pick]
    return best_counts / best_counts.sum()


def choose_weights(method: str, probabilities, labels, score, member_scores) -> np.ndarray:
    """Weights for a method: equal (hard, soft), by validation score (weighted), greedy."""
    if method == "greedy":
        return greedy_weights(probabilities, labels, score)
    if method == "weighted":
        scores = np.maximum(np.asarray(member_scores, dtype=float), 1e-6)
        return scores / scores.sum()
    return np.full(len(probabilities), 1 / len(probabilities))


class EnsembleModel:
    """A loaded ensemble: members (Keras models or ensembles), their weights and method, its own TTA
    set and temperature. aigc.inference.output computes what it predicts."""

    def __init__(self, members: list, weights, method: str, tta=None, temperature: float | None = None):
        sizes = {tuple(m.input_shape[1:]) for m in members}
        classes = {m.output_shape[-1] for m in members}
        if len(sizes) != 1 or len(classes) != 1:
            raise UserError(f"ensemble members disagree on input shape {sizes} or class count {classes}")
        self.members, self.weights, self.method = members, list(weights), method
        self.tta = tuple(tta) if tta else None  # averaged over before the temperature
        self.temperature = temperature  # train.calibrate: temperature, fitted on what it scales
        self.input_shape = members[0].input_shape
        self.output_shape = members[0].output_shape


def description(members: list[dict], weights, method: str, selection: str, tta=None,
                temperature: float | None = None) -> dict:
    """The JSON an ensemble model is logged as (ENSEMBLE_FILE).

    `members`: {"model_uri", "run_id"} each; `tta`: the measured transform names: the ensemble's
    output is the mean of its combined members' probabilities over them. A single model with its
    TTA set is a one-member ensemble. `temperature`: applied once, last, to that mean:
    softmax(log p / T). Each member predicts as it would alone (its own TTA and temperature).
    """
    if method not in ("hard", "soft") or len(members) != len(weights) or not members:
        raise ValueError(f"an ensemble needs a method hard/soft and one weight per member, got {method!r}, "
                         f"{len(members)} members, {len(weights)} weights")
    spec = {"method": method, "selection": selection,
            "members": [{**member, "weight": float(weight)} for member, weight in zip(members, weights)]}
    if tta is not None:
        check_names(tta, "ensemble tta")
        spec["tta"] = list(tta)
    if temperature is not None:
        spec["temperature"] = float(temperature)
    return spec


def fold_ensemble(model_uris: list[str], run_ids: list[str], tta=None, temperature: float | None = None) -> dict:
    """A CV run's K fold models as one model: the mean of their probabilities, equal weights."""
    members = [{"model_uri": uri, "run_id": run_id} for uri, run_id in zip(model_uris, run_ids, strict=True)]
    return description(members, np.full(len(members), 1 / len(members)), "soft", "cv-folds", tta, temperature)


def merge_submissions(paths: list[Path], out: Path, max_bytes: int = DataConfig.max_table_bytes) -> Path:
    """Majority vote over submission CSVs (same header and ids); a tie goes to the earliest file.

    A file over `max_bytes` (data.max_table_bytes) is refused before it is read."""
    from aigc.data.csv_io import write_csv_atomic
    from aigc.output import check_output_file

    check_output_file(out, inputs=paths)
    if len(paths) < 2:
        raise UserError("--csv needs at least two submission files to merge")
    tables = [_read_submission(Path(p), max_bytes) for p in paths]
    header, ids = tables[0][0], [row[0] for row in tables[0][1]]
    for path, (other_header, rows) in zip(paths[1:], tables[1:]):
        if other_header != header:
            raise UserError(f"{path}: header {first_rows(map(short, other_header))} differs from {paths[0]}'s "
                            f"{first_rows(map(short, header))}")
        other = [row[0] for row in rows]
        if sorted(other) != sorted(ids) or len(other) != len(ids):
            extra, absent = sorted(set(other) - set(ids)), sorted(set(ids) - set(other))
            raise UserError(f"{path}: ids differ from {paths[0]}: {len(extra)} extra "
                            f"({first_rows(map(short, extra))}), {len(absent)} missing "
                            f"({first_rows(map(short, absent))}); merge submissions of the same test set")
    labels = [dict(rows) for _, rows in tables]
    merged = []
    for image_id in ids:
        votes = [table[image_id] for table in labels]
        counts = Counter(votes)
        top = max(counts.values())
        merged.append((image_id, next(v for v in votes if counts[v] == top)))  # earliest file among the tied
    return write_csv_atomic(out, header, merged)


def _read_submission(path: Path, max_bytes: int):
    if not path.exists():
        raise UserError(f"{path}: submission file not found")
    data = read_capped(path, max_bytes, "data.max_table_bytes")
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); a submission is a UTF-8 CSV") from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None
    if not rows or len(rows[0]) != 2 or any(len(r) != 2 for r in rows[1:]):
        raise UserError(f"{path}: expected a two-column submission CSV (id,label) with a header")
    return rows[0], [tuple(r) for r in rows[1:]]
