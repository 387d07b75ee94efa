"""Cross-validation folds: pooled images, duplicate groups, stratified group k-fold (no MLflow here).

A fold assignment depends only on the seed and the images (ids, labels, groups),
never on the order they were listed in: ids are sorted first. Images that
preprocess found byte-identical form one group, and a group is never split
across folds, so no copy of an image is trained on and validated on at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aigc.errors import UserError, first_rows


@dataclass(frozen=True)
class Pool:
    """The labelled images cross-validation splits into folds, keyed by id."""

    ids: tuple[str, ...]
    labels: np.ndarray
    groups: np.ndarray  # images sharing a number are copies of each other: always in one fold
    images: PooledImages


def pool_splits(dataset, cache, pool_validation: bool = True, near_duplicate_distance: int = -1) -> Pool:
    """Train (and validation, unless it stays a holdout) of a dataset and its decoded cache, as one pool.

    Byte-identical images share a group, and so do near-duplicates (perceptual hashes at most
    `near_duplicate_distance` bits apart; -1: exact copies only), as preprocess reports them.
    """
    from aigc.audit import dataset_near_duplicates

    names = ["train", "val"] if pool_validation else ["train"]
    splits = [dataset.splits[name] for name in names]
    ids = tuple(image_id for split in splits for image_id in split.ids)
    split_names = [split.name for split in splits for _ in split.ids]
    near = dataset_near_duplicates(dataset, cache, near_duplicate_distance)
    return Pool(ids, np.concatenate([split.labels for split in splits]),
                duplicate_groups(split_names, ids, [*cache.report["duplicates"], *near]),
                PooledImages([cache.images(name) for name in names]))


def duplicate_groups(splits: Sequence[str], ids: Sequence[str], duplicates: Iterable[Iterable[str]]) -> np.ndarray:
    """A group number per pooled image; images in one duplicate group share it.

    `splits[i]`/`ids[i]` name image i as the cache report does ("train/<id>"), and
    `duplicates` is `cache.report["duplicates"]`: lists of such keys. Members that are
    not pooled (test images, a held-out validation split) are ignored. Groups that
    share an image are merged (union-find), so a later source of groups (near
    duplicates) can be passed alongside the exact ones.
    """
    index = {f"{split}/{image_id}": n for n, (split, image_id) in enumerate(zip(splits, ids))}
    parent = list(range(len(index)))

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]  # path halving keeps the trees flat
            n = parent[n]
        return n

    for group in duplicates:
        members = [index[key] for key in group if key in index]
        for member in members[1:]:
            parent[root(member)] = root(members[0])
    return np.unique([root(n) for n in range(len(parent))], return_inverse=True)[1].astype(np.int64)


def make_folds(ids: Sequence[str], labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int,
               class_names: Sequence[str] | None = None) -> np.ndarray:
    """The fold (0..k-1) of each image, in the order given: stratified group k-fold.

    Deterministic from the seed and the images themselves: the same id gets the same
    fold whatever order the ids come in. `groups=None`: every image its own group.
    """
    ids = np.asarray([str(i) for i in ids])
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.arange(len(ids)) if groups is None else np.asarray(groups)
    if not len(ids) == len(labels) == len(groups):
        raise ValueError(f"{len(ids)} ids, {len(labels)} labels and {len(groups)} groups: one each per image")
    _check_unique(ids)
    order = np.argsort(ids, kind="stable")
    _check_enough(labels[order], _canonical(groups[order]), k, class_names)
    return _assign(ids, labels, groups, k, seed)


def selection_split(ids: Sequence[str], labels: np.ndarray, groups: np.ndarray | None, fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows to fit on, rows that choose): about `fraction` of each class held out of fitting, for a run's
    choices (best epoch, early stopping, plateau, EMA or raw), copies of an image on one side.

    One fold of a stratified group k-fold with k = 1/fraction, deterministic like make_folds. A class with
    fewer separate images than k may be missing from the choosing rows: it only helps choose an epoch.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    # sklearn needs k <= the largest class and <= the number of groups
    k = min(max(2, round(1 / fraction)), int(np.bincount(labels).max()), len(np.unique(groups)))
    if k < 2:
        raise UserError(f"{len(labels)} training images are too few to hold out a slice that chooses the epoch; "
                        "use train.select_on=last (or more images)")
    parts = _assign(np.asarray([str(i) for i in ids]), labels, groups, k, seed)
    return np.flatnonzero(parts != 0), np.flatnonzero(parts == 0)


def _assign(ids: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """make_folds without its checks: the fold of each image, from the seed and the sorted ids."""
    order = np.argsort(ids, kind="stable")
    labels, groups = labels[order], _canonical(groups[order])
    splitter = _splitter(k, seed, grouped=len(np.unique(groups)) < len(groups))
    in_order = np.empty(len(ids), dtype=np.int64)
    with warnings.catch_warnings():  # its "least populated class" warning is _check_enough's refusal
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, validation) in enumerate(splitter.split(np.zeros(len(ids)), labels, groups)):
            in_order[validation] = fold
    folds = np.empty(len(ids), dtype=np.int64)
    folds[order] = in_order
    return folds


def fold_indices(folds: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) image indices of one fold."""
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


class PooledImages:
    """Rows of several image arrays (the cache's train and val splits) indexed as one array.

    Like the cache's `Images` it reads only the rows asked for, so pooling the splits
    and taking a fold's part of the pool never copies the dataset: a fold's training
    images are `pool.take(train_indices)`, usable wherever an image array is.
    """

    def __init__(self, arrays: Sequence):
        if len({(tuple(a.shape[1:]), np.dtype(a.dtype)) for a in arrays}) != 1:
            raise ValueError("pooled image arrays must share their image shape and dtype")
        self._set(list(arrays), np.concatenate([np.full(len(a), n, dtype=np.int64) for n, a in enumerate(arrays)]),
                  np.concatenate([np.arange(len(a), dtype=np.int64) for a in arrays]))

    def _set(self, arrays: list, source: np.ndarray, row: np.ndarray) -> None:
        self.arrays, self._source, self._row = arrays, source, row  # pooled row i = arrays[source[i]][row[i]]
        self.dtype = np.dtype(arrays[0].dtype)
        self.shape = (len(row), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self._row)

    def take(self, indices) -> PooledImages:
        """The view of these pooled rows, in this order."""
        indices = np.asarray(indices, dtype=np.int64)
        view = object.__new__(PooledImages)
        view._set(self.arrays, self._source[indices], self._row[indices])
        return view

    def __getitem__(self, key) -> np.ndarray:
        positions = np.arange(len(self))[key]
        if np.ndim(positions) == 0:
            return self.arrays[self._source[positions]][int(self._row[positions])]
        out = np.empty((len(positions), *self.shape[1:]), self.dtype)
        sources, rows = self._source[positions], self._row[positions]
        for n, array in enumerate(self.arrays):
            mine = np.flatnonzero(sources == n)
            if len(mine):
                out[mine] = array[rows[mine]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return self[:].astype(dtype)


def _splitter(k: int, seed: int, grouped: bool):
    """StratifiedGroupKFold; StratifiedKFold when no image has a copy (same guarantee, ~100x faster:
    StratifiedGroupKFold places groups one at a time, 19 s for 15,000 images here)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    kind = StratifiedGroupKFold if grouped else StratifiedKFold
    return kind(n_splits=k, shuffle=True, random_state=seed)


def _check_unique(ids: np.ndarray) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"ids listed more than once in the pooled images: {first_rows(values[counts > 1])}; "
                        "cross-validation keys every image by its id: give each image one id (an id in both train "
                        "and validation cannot be pooled: set cv.pool_validation false or rename it)")


def _canonical(groups: np.ndarray) -> np.ndarray:
    """Group labels renumbered by first appearance: the same partition gives the same numbers."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def _check_enough(labels: np.ndarray, groups: np.ndarray, k: int, class_names) -> None:
    """Every class must reach every fold's validation: at least k separate groups (images) of it."""
    if k < 2:
        raise UserError(f"cv.folds={k}: cross-validation needs at least 2 folds")
    pairs = np.unique(np.stack([labels, groups], axis=1), axis=0)  # one row per (class, group)
    classes, per_class = np.unique(pairs[:, 0], return_counts=True)
    smallest = int(np.argmin(per_class))
    separate = int(per_class[smallest])
    if separate < k:
        label = int(classes[smallest])
        name = class_names[label] if class_names is not None else label
        images = int(np.sum(labels == label))
        fix = f"use cv.folds={separate} or fewer" if separate >= 2 else "add images of that class"
        raise UserError(f"cv.folds={k}: class {name!r} has only {separate} separate images ({images} counting "
                        f"duplicates), so some fold would validate without it; {fix}")
