"""Test-time augmentation (TTA) as a measured choice: named transforms, and the set that helps.

A TTA set is a list of transform names; the prediction is the mean of the model's
probabilities over the transformed copies. Names (not code) are what a model
stores, so `predict` applies exactly the set that was measured. Transforms work on
a batch (N, H, W, 3) of float pixels, numpy or tf, and keep its shape.

TensorFlow is imported by the first transform, not with the module: checking a stored set's names
(`predict` reading a model, `ensemble` a description) must not wait ~10 s for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aigc.errors import UserError

SHIFT = 1 / 16  # of the side: a few pixels, within what training augmentation shows the model
NUDGE = 2  # pixels: the speed records' multi-crop TTA (flip x a 1-2 px translation) keeps fine pixel statistics
CROP = 7 / 8  # side of the zoom and corner crops, resized back to the full image
FLIP = ("identity", "hflip")  # what `tta=True` has always meant


def _along(axis: int, start: int, stop: int) -> tuple:
    """The index of rows (axis 1) or columns (axis 2) start..stop of an image batch."""
    return tuple(slice(start, stop) if n == axis else slice(None) for n in range(4))


def _shift(batch, dy: int, dx: int):
    """Content moved by (dy, dx) pixels; the uncovered border repeats the edge (fill_mode nearest).

    Static slices and one concat per axis: tf.repeat and tf.gather put dozens of ops in every traced graph,
    and the 16 shifted views are traced again for each model that measures or applies them."""
    import tensorflow as tf

    for axis, by in ((1, dy), (2, dx)):
        size = batch.shape[axis]
        if by > 0:
            batch = tf.concat([batch[_along(axis, 0, 1)]] * by + [batch[_along(axis, 0, size - by)]], axis=axis)
        elif by < 0:
            batch = tf.concat([batch[_along(axis, -by, size)]] + [batch[_along(axis, size - 1, size)]] * -by,
                              axis=axis)
    return batch


def _crop(batch, where: str):
    """A CROP-sized window (centre or a corner) resized back to the batch's size."""
    import tensorflow as tf

    height, width = batch.shape[1], batch.shape[2]
    side_y, side_x = max(1, round(height * CROP)), max(1, round(width * CROP))
    top = {"t": 0, "c": (height - side_y) // 2, "b": height - side_y}[where[0]]
    left = {"l": 0, "c": (width - side_x) // 2, "r": width - side_x}[where[1]]
    window = batch[:, top:top + side_y, left:left + side_x, :]
    return tf.image.resize(window, (height, width), method="bilinear")


def _flip(batch):
    """Mirrored left to right."""
    import tensorflow as tf

    return tf.reverse(batch, axis=[2])


def _pixels(batch) -> int:
    return max(1, round(batch.shape[1] * SHIFT))


TRANSFORMS: dict[str, Callable] = {
    "identity": lambda b: b,
    "hflip": _flip,
    "shift_up": lambda b: _shift(b, -_pixels(b), 0),
    "shift_down": lambda b: _shift(b, _pixels(b), 0),
    "shift_left": lambda b: _shift(b, 0, -_pixels(b)),
    "shift_right": lambda b: _shift(b, 0, _pixels(b)),
    "zoom": lambda b: _crop(b, "cc"),
    "crop_tl": lambda b: _crop(b, "tl"),
    "crop_tr": lambda b: _crop(b, "tr"),
    "crop_bl": lambda b: _crop(b, "bl"),
    "crop_br": lambda b: _crop(b, "br"),
    # multi-crop: the image and its mirror moved by NUDGE pixels (no resampling: the pixels are the image's own)
    **{f"{flip}nudge_{where}": (lambda b, dy=dy, dx=dx, flip=flip: _shift(_flip(b) if flip else b,
                                                                           dy, dx))
       for flip in ("", "hflip_")
       for where, (dy, dx) in (("up", (-NUDGE, 0)), ("down", (NUDGE, 0)), ("left", (0, -NUDGE)),
                               ("right", (0, NUDGE)))},
}
CANDIDATES = tuple(name for name in TRANSFORMS if name != "identity")


def apply(name: str, batch):
    """One named transform of a batch of images (a tf tensor; np.asarray() gives numpy back)."""
    import tensorflow as tf

    return TRANSFORMS[name](tf.cast(batch, tf.float32))


def batch_views(names: Sequence[str]) -> Callable:
    """For a dataset's map: a batch -> its copies transformed by each of `names`, stacked on the batch axis."""
    import tensorflow as tf

    def views(batch):
        return tf.concat([apply(name, batch) for name in names], axis=0)

    # Plain TF ops, their Python branches settled by the batch's static shape: autograph would convert every
    # transform first (~0.8 s a process for the 19 TTA views), for nothing, and leave its files in TMPDIR.
    return tf.autograph.experimental.do_not_convert(views)


def transform_names(tta, stored: Sequence[str] | None = None) -> tuple[str, ...]:
    """The transforms a prediction averages over.

    True: identity and horizontal flip. A list: exactly those. False or None: the set
    stored with the model when it has one (what was measured), else none (identity).
    """
    if tta is True:
        return FLIP
    names = tuple(tta) if tta not in (None, False) else tuple(stored or ("identity",))
    check_names(names)
    return names


def check_names(names: Sequence[str], where: str = "tta") -> None:
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"{where}: {list(names)} is not a TTA set: give distinct names from "
                        f"{', '.join(TRANSFORMS)} (unknown: {', '.join(map(str, unknown)) or 'none'})")


@dataclass(frozen=True)
class TTAChoice:
    """The measured set and what it is worth on the images it was measured on."""

    transforms: tuple[str, ...]  # starts with identity; store this with the model
    score: float  # with the chosen set
    identity_score: float  # without TTA
    trials: tuple[tuple[str, float], ...]  # every set tried ("identity+hflip", score), in order

    @property
    def gain(self) -> float:
        return self.score - self.identity_score


def choose_tta(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, score,
               min_gain: float = 0.0) -> TTAChoice:
    """Forward selection from identity: add the transform that raises `score` most, while it gains > min_gain.

    `probabilities[name]` is the model's output on the images transformed by `name`
    (out-of-fold or validation), `score(labels, predictions)` the competition metric.
    Identity always stays in, and a transform joins only if the set then scores
    strictly higher, so the choice never scores below plain prediction on these images.
    """
    if "identity" not in probabilities:
        raise ValueError("choose_tta needs the identity's probabilities (prediction without TTA)")
    chosen, total = ["identity"], np.asarray(probabilities["identity"], dtype=np.float64)
    best = identity = float(score(labels, total.argmax(axis=1)))
    trials = [("identity", best)]
    remaining = [name for name in probabilities if name != "identity"]
    while remaining:
        scored = []
        for name in remaining:  # ties go to the earlier candidate: deterministic
            mean = (total + probabilities[name]) / (len(chosen) + 1)
            scored.append(float(score(labels, mean.argmax(axis=1))))
            trials.append(("+".join([*chosen, name]), scored[-1]))
        pick = int(np.argmax(scored))
        if scored[pick] <= best + min_gain:
            break
        best = scored[pick]
        chosen.append(remaining.pop(pick))
        total = total + probabilities[chosen[-1]]
    return TTAChoice(tuple(chosen), best, identity, tuple(trials))


def measure_tta(predict: Callable[[object, str], np.ndarray], images, labels: np.ndarray, score,
                candidates: Sequence[str] = CANDIDATES, min_gain: float = 0.0) -> TTAChoice:
    """Predict `images` once per transform and choose the set that helps (see choose_tta).

    `predict(images, name)` returns class probabilities of the transformed images, e.g.
    `lambda x, name: inference.predict_probabilities(model, x, 64, [name])`.
    """
    names = ("identity", *[n for n in candidates if n != "identity"])
    check_names(names, "TTA candidates")
    return choose_tta({name: predict(images, name) for name in names}, labels, score, min_gain)
