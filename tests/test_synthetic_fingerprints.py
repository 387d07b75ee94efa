"""Fingerprinted synthetic data: the class is in how an image was upsampled, not in what it shows."""

import numpy as np
import pytest

from aigc.data.synthetic import UPSAMPLERS, UPSCALE, make_dataset, render_fingerprinted


def test_a_fingerprinted_class_is_its_upsampling_filter():
    rng = np.random.default_rng(0)
    nearest = render_fingerprinted(0, 5, 64, rng).astype(float)  # UPSCALE x UPSCALE blocks, plus faint noise
    blocks = nearest.reshape(64 // UPSCALE, UPSCALE, 64 // UPSCALE, UPSCALE, 3)
    assert blocks.std(axis=(1, 3)).mean() < 2.5
    smooth = render_fingerprinted(1, 5, 64, rng).astype(float).reshape(blocks.shape)  # bilinear: no blocks
    assert smooth.std(axis=(1, 3)).mean() > blocks.std(axis=(1, 3)).mean() + 1


def test_fingerprinted_datasets_have_at_most_one_class_per_filter(tmp_path):
    out = make_dataset(tmp_path / "ok", layout="deepfake", classes=len(UPSAMPLERS), per_class=2, size=32,
                       fingerprints=True)
    assert (out / "train.csv").read_text().count("\n") == 1 + 2 * len(UPSAMPLERS)
    with pytest.raises(ValueError, match="with fingerprints"):
        make_dataset(tmp_path / "too-many", layout="deepfake", classes=len(UPSAMPLERS) + 1, fingerprints=True)
