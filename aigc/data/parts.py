"""A `Part`: the images one model trains, chooses or is scored on, with labels, ids and a digest.

A train run's parts are whole splits; a cross-validation fold's are rows of the pooled images;
label fixes (aigc.data.fixes) and the inner selection slice (aigc.folds.selection_split) take rows
of a part. The digest names exactly these rows and labels, so two runs compare their datasets by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Part:
    """`images` indexable like cache.images(split) (uint8 N x H x W x 3), `labels` (int, N), `ids` (N, as the
    competition spells them), `digest` (identifies exactly these rows)."""

    name: str  # e.g. "train", "val", "fold2-train": the logged dataset is called <data folder>-<name>
    images: object
    labels: np.ndarray
    ids: tuple
    digest: str

    def take(self, rows, name: str, labels=None) -> Part:
        """These rows as a part of their own (with `labels` instead of theirs: label fixes)."""
        from aigc.folds import PooledImages

        rows = np.asarray(rows, dtype=np.int64)
        ids = tuple(self.ids[r] for r in rows)
        labels = self.labels[rows] if labels is None else np.asarray(labels, dtype=np.int64)
        images = self.images if isinstance(self.images, PooledImages) else PooledImages([self.images])
        return Part(name, images.take(rows), labels, ids, rows_digest(self.digest, ids, labels))


def rows_digest(*parts) -> str:
    """Identifies exactly these rows: a digest of what they come from (a dataset's digest), ids, labels."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(repr(list(np.asarray(part).tolist()) if not isinstance(part, str) else part).encode())
    return digest.hexdigest()
