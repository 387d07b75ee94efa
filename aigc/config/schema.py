"""The experiment config's schema: every section a frozen pydantic dataclass, every constraint beside its
field, so this file is the one place that says which values are allowed (aigc.config.loading reads
a YAML file and overrides into it).

The sections stay real dataclasses: `dataclasses.replace` and `asdict` work on them
(`replace` validates the new values too).

Numbers are strict: YAML's `true` is not an int and `3.0` is not an epoch count. Two
YAML habits are forgiven: an int where a float is wanted, and `5e-4`, which YAML 1.1
reads as a string.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass

from aigc.inputs import too_large

LAYOUTS = ("auto", "gic", "deepfake", "folders")


def _yaml_float(value):
    """YAML 1.1 reads 5e-4 (no dot) as a string: take it as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _number_to_str(value):
    """`experiment: 2023` is a name, not a number."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _model_name(value: str) -> str:
    if any(c in value for c in "/:@"):  # MLflow refuses / and :, and NAME@alias is how aigc refers to a version
        raise ValueError(f"must not contain '/', ':' or '@'; got {value!r}")
    return value


def _fix_file(value, info):
    """data.exclude_ids / data.relabel: "" (none) or an existing CSV within data.max_table_bytes, checked when
    the config loads (before anything reads it)."""
    if value and not Path(value).is_file():
        raise ValueError(f"no such file {value!r}; give the CSV `aigc audit labels` logged (fixes/...), or \"\"")
    limit = info.data.get("max_table_bytes")  # absent when it is itself invalid
    if value and limit and Path(value).stat().st_size > limit:
        raise ValueError(too_large(value, limit, "data.max_table_bytes", Path(value).stat().st_size))
    return value


def _pair(value):
    """[low, high] from YAML's list (a tuple field refuses other shapes with a clearer message here)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"must be a list of two numbers [low, high]; got {value!r}")
    return tuple(value)


def _brightness(value):
    if value is not None and not 0 <= value[0] <= value[1]:
        raise ValueError(f"must be [low, high] with 0 <= low <= high; got {list(value)}")
    return value


def _class_or_default(key):
    """An oversample key: a class number (an override gives "4") or "default"."""
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if key == "default" or (isinstance(key, int) and not isinstance(key, bool) and key >= 0):
        return key
    raise ValueError("is not a class number or 'default' (each entry: class -> integer factor >= 1)")


# Strict scalars: no bool for a number, no "3" for an int, no NaN or infinity.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_yaml_float), Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, BeforeValidator(_number_to_str), Strict()]
Name = Annotated[Str, Field(min_length=1)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]  # [0, 1)
ClassKey = Annotated[Any, AfterValidator(_class_or_default)]
Mapping = Annotated[dict, Strict()]

_SECTION = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_SECTION)
class DataConfig:
    layout: Literal["auto", "gic", "deepfake", "folders"] = "auto"
    image_size: Annotated[Int, Field(ge=8)] = 64  # square side the images are resized to
    batch_size: Annotated[Int, Field(ge=1)] = 64
    num_classes: Annotated[Int, Field(ge=0)] = 0  # 0: one more than the largest label seen
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.1  # folders layout only: held out from train, by hash of id
    limit: Annotated[Int, Field(ge=0)] = 0  # at most this many images per split (0: all); used by smoke runs
    # {class: factor, "default": factor}
    oversample: dict[ClassKey, Annotated[Int, Field(ge=1)]] = field(default_factory=dict)
    class_weights: Literal["none", "balanced"] = "none"
    cache_dir: Name = ".aigc-cache"
    workers: Annotated[Int, Field(ge=0)] = 0  # decode threads for the cache build (0: one per core)
    # a CSV aigc reads (the competition's, the fix files below, submissions to merge) past this is refused before
    # it is read: a competition's CSVs are a few MB. Declared before the fix files, whose check reads it
    max_table_bytes: Annotated[Int, Field(ge=1)] = 64 << 20
    # Fixes from a label audit, for the rows a model trains on (never those that score it): a CSV with an
    # `id` column (those rows are left out of training), and one with `id,label` (they train with that
    # label). Validation and out-of-fold rows keep their original labels. "": none.
    exclude_ids: Annotated[Str, AfterValidator(_fix_file)] = ""
    relabel: Annotated[Str, AfterValidator(_fix_file)] = ""
    # preprocess's near-duplicate audit: perceptual hashes at most this many bits apart (of 64) are one
    # group, kept in one cross-validation fold; 0: identical hashes only; -1: off
    near_duplicate_distance: Annotated[Int, Field(ge=-1, le=16)] = 4
    # an image file past either limit is refused before it is decoded (decompression bombs, stray huge files)
    max_image_bytes: Annotated[Int, Field(ge=1)] = 64 << 20
    max_image_pixels: Annotated[Int, Field(ge=1)] = 50_000_000  # width x height (PIL refuses past 179M)


def _needs_horizontal_flip(on, info):
    if on and not info.data.get("horizontal_flip"):
        raise ValueError("needs augment.horizontal_flip: true (it decides when each image is mirrored)")
    return on


@dataclass(frozen=True, config=_SECTION)
class AugmentConfig:
    """Same numbers and meanings as Keras 2's ImageDataGenerator (see aigc/data/augment.py)."""

    rotation: Annotated[Float, Field(ge=0, le=360)] = 0.0  # degrees
    # IDG read values >= 1 as pixels; only fractions of the side are supported here.
    width_shift: Fraction = 0.0
    height_shift: Fraction = 0.0
    shear: Annotated[Float, Field(ge=0, lt=90)] = 0.0  # degrees; 90 would be a degenerate matrix
    zoom: Fraction = 0.0  # zoom in [1 - z, 1 + z]: 1 - z must stay > 0
    # multiply by a factor in [lo, hi]
    brightness: Annotated[Optional[Annotated[tuple[Float, Float], BeforeValidator(_pair)]],
                          AfterValidator(_brightness)] = None
    horizontal_flip: Bool = False
    vertical_flip: Bool = False
    channel_shift: Annotated[Float, Field(ge=0, le=255)] = 0.0  # pixel units (0..255)
    cutmix: Annotated[Float, Field(ge=0)] = 0.0  # Beta(alpha, alpha); 0 = off
    mixup: Annotated[Float, Field(ge=0)] = 0.0
    on_device: Bool = False  # run the augmentation layers in the model (GPU) instead of tf.data (CPU)
    random_erasing: Fraction = 0.0  # probability an image gets a random box erased to noise (0 = off)
    # with horizontal_flip: each image mirrored on alternate epochs (its first time by a coin), not by a coin
    # every time (airbench), so every epoch pair shows both sides; declared after horizontal_flip, which it reads
    alternating_flip: Annotated[Bool, AfterValidator(_needs_horizontal_flip)] = False
    # contrast and saturation jitter: each multiplied by a factor within [1 - c, 1 + c] (0 = off); no hue
    # shift: a generator's colour cast is part of its fingerprint
    color_jitter: Fraction = 0.0


@dataclass(frozen=True, config=_SECTION)
class ModelConfig:
    name: Name = "resnet"  # a key of aigc.models.MODELS (the builder checks it and its params)
    params: Mapping = field(default_factory=dict)  # keyword arguments of that builder
    # a .keras archive whose central directory declares more bytes unpacked, or more files, is refused before
    # Keras unpacks it (a zip bomb: a small file declaring gigabytes); aigc's models unpack to a few MB
    max_archive_bytes: Annotated[Int, Field(ge=1)] = 1 << 30
    max_archive_files: Annotated[Int, Field(ge=1)] = 1000


@dataclass(frozen=True, config=_SECTION)
class EarlyStoppingConfig:
    """Stops training; the final weights are always the best epoch's (train.checkpoint_monitor)."""

    monitor: Name = "val_loss"
    patience: Annotated[Int, Field(ge=0)] = 10


@dataclass(frozen=True, config=_SECTION)
class PlateauConfig:
    monitor: Name = "val_loss"
    factor: Annotated[Float, Field(gt=0, lt=1)] = 0.5  # Keras refuses >= 1
    patience: Annotated[Int, Field(ge=0)] = 15
    min_lr: Annotated[Float, Field(ge=0)] = 1e-5


def _plateau_needs_constant(plateau, info):
    if plateau is not None and info.data.get("schedule", "constant") != "constant":
        raise ValueError("needs train.schedule: constant (a schedule owns the rate)")
    return plateau


def _positive_budget(minutes):
    if minutes <= 0:
        raise ValueError(f"must be > 0 minutes, got {minutes:g}; null (train.budget_minutes=null) turns the budget off")
    return minutes


def _warmup_needs_schedule(epochs, info):
    if epochs and info.data.get("schedule", "constant") not in ("cosine", "onecycle"):
        raise ValueError("needs train.schedule cosine or onecycle (the schedule the warm-up leads into)")
    return epochs


def _needs_ema(frequency, info):
    if frequency is not None and not info.data.get("ema"):
        raise ValueError("needs train.ema > 0 (the average it overwrites the weights with)")
    return frequency


def _mixed_precision_alias(on, info):
    if on and info.data.get("precision", "float32") not in ("float32", "mixed_float16"):
        raise ValueError(f"true means precision mixed_float16, but train.precision is {info.data['precision']}; "
                         "set only train.precision")
    return on


@dataclass(frozen=True, config=_SECTION)
class TrainConfig:
    epochs: Annotated[Int, Field(ge=1)] = 10  # with budget_minutes: the most epochs the plan may choose
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: Annotated[Float, Field(gt=0)] = 1e-3  # the peak rate of a warm-up / one-cycle schedule
    weight_decay: Annotated[Float, Field(ge=0)] = 0.0  # adamw: decoupled, never on norms and biases
    momentum: Annotated[Float, Field(ge=0, le=1)] = 0.9  # sgd; Keras refuses outside [0, 1]
    # BatchNorm offsets (beta) learn this many times faster than the other weights (the speed records' bias scaler)
    bn_bias_lr_scale: Annotated[Float, Field(gt=0)] = 1.0
    # cosine / onecycle with budget_minutes or warmup_epochs: end when training ends (aigc.training.PlannedSchedule)
    schedule: Literal["constant", "exponential", "cosine", "onecycle"] = "constant"
    decay_steps: Annotated[Int, Field(ge=1)] = 1000  # exponential / cosine without a plan
    decay_rate: Annotated[Float, Field(gt=0, le=1)] = 0.95  # exponential; > 1 would grow the rate
    # cosine / onecycle: linear warm-up (onecycle without it: 30% of the run)
    warmup_epochs: Annotated[Float, Field(ge=0), AfterValidator(_warmup_needs_schedule)] = 0.0
    # wall-clock minutes for fit (validation included): plans the epochs and ends the schedule with them
    budget_minutes: Optional[Annotated[Float, AfterValidator(_positive_budget)]] = None
    # ReduceLROnPlateau (constant schedule only); declared after `schedule`, which its check reads
    plateau: Annotated[Optional[PlateauConfig], AfterValidator(_plateau_needs_constant)] = None
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint_monitor: Name = "val_accuracy"  # the best epoch, restored at the end
    label_smoothing: Fraction = 0.0
    ema: Fraction = 0.0  # momentum of an exponential moving average of the weights (e.g. 0.999); 0 = off
    # with ema: every this many steps the weights are overwritten by their average (lookahead-style, as in
    # airbench); None: never (the average is only validated and kept where it scores better)
    ema_overwrite_frequency: Annotated[Optional[Annotated[Int, Field(ge=1)]], AfterValidator(_needs_ema)] = None
    seed: Annotated[Int, Field(ge=0, lt=2**32)] = 42  # NumPy's seed range
    deterministic: Bool = False  # tf op determinism: reproducible, slower
    # auto: mixed_bfloat16 on a CPU with AMX / AVX512-BF16, mixed_float16 on a tensor-core GPU, else float32
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # former switch, kept as an alias: true means precision mixed_float16
    mixed_precision: Annotated[Bool, AfterValidator(_mixed_precision_alias)] = False
    jit_compile: Bool = False  # XLA
    # temperature: softmax(logits / T), T fitted on held-out probabilities, so predict writes calibrated
    # probabilities: a train run fits it on validation and logs the model with it; a cv run on its out-of-fold
    # probabilities, an ensemble on its validation probabilities, each storing T in the ensemble's description
    calibrate: Literal["none", "temperature"] = "none"
    # What chooses the kept weights (best epoch, early stopping, plateau, EMA or raw): auto: nothing when
    # there is nothing to choose (a planned cosine/onecycle schedule, no early stopping, plateau or EMA:
    # the last epoch), else an inner slice of the training images; inner; last (the last epoch);
    # validation (the validation split, as the seeds did: its score is then slightly optimistic; a cv
    # fold uses an inner slice instead, never its own out-of-fold images)
    select_on: Literal["auto", "inner", "last", "validation"] = "auto"
    select_fraction: Annotated[Float, Field(gt=0, le=0.5)] = 0.1  # of the training images, for `inner`
    # test-time augmentation: the validation images predicted under every candidate transform (aigc.tta), the set
    # that helps chosen cross-fitted and stored with the model, which `predict` then applies (a cv run: cv.tta)
    tta: Bool = True


@dataclass(frozen=True, config=_SECTION)
class TrackingConfig:
    enabled: Bool = True  # false: `train` writes its results to aigc-runs/ instead of MLflow
    experiment: Name = "aigc"
    registered_model: Annotated[Name, AfterValidator(_model_name)] = "aigc-classifier"
    metric: Literal["auto", "accuracy", "f1_macro", "f1_weighted"] = "auto"  # auto: by layout
    # promote: champion moves only past this margin (a score difference: below 1)
    min_improvement: Fraction = 0.0
    # significant: the challenger must also be better by McNemar's exact test on the images both models
    # have held-out predictions for (p < promote_alpha); better: any improvement past min_improvement
    promote_rule: Literal["significant", "better"] = "significant"
    promote_alpha: Annotated[Float, Field(gt=0, lt=1)] = 0.05
    log_model: Bool = True
    log_system_metrics: Bool = True
    # a table aigc reads back from a run (validation or out-of-fold probabilities, test probabilities) past this
    # is refused before it is read: 160,000 images x 100 classes is about 200 MB
    max_artifact_bytes: Annotated[Int, Field(ge=1)] = 1 << 30


@dataclass(frozen=True, config=_SECTION)
class EnsembleConfig:
    # Keras models one ensemble may load, nested ensembles included (a fold ensemble has 5-10): a
    # description is data, and a huge member list would load models until memory runs out
    max_members: Annotated[Int, Field(ge=2, le=1000)] = 50


@dataclass(frozen=True, config=_SECTION)
class TuneConfig:
    algorithm: Literal["random", "hyperband", "bayesian"] = "random"
    max_trials: Annotated[Int, Field(ge=1)] = 15
    epochs: Annotated[Int, Field(ge=1)] = 20  # per trial
    objective: Name = "val_accuracy"  # aigc.tuning.check asks keras-tuner whether it can rank it
    space: Mapping = field(default_factory=dict)  # overrides of the tunable model's choices
    retrain_epochs: Annotated[Int, Field(ge=0)] = 0  # 0: no retrain run


@dataclass(frozen=True, config=_SECTION)
class PseudoLabelConfig:
    """Test images the fold ensemble is this sure of join the training set for another round."""

    threshold: Annotated[Float, Field(gt=0.5, lt=1)] = 0.95  # top class probability
    rounds: Annotated[Int, Field(ge=1)] = 1


@dataclass(frozen=True, config=_SECTION)
class CvConfig:
    folds: Annotated[Int, Field(ge=2)] = 5  # stratified group folds
    pool_validation: Bool = True  # fold the validation split into the pool the folds are cut from
    pseudo_label: Optional[PseudoLabelConfig] = None  # off unless given (`pseudo_label: {}`: defaults)
    tta: Bool = True  # choose test-time augmentation on the OOF predictions (one prediction per candidate)


@dataclass(frozen=True, config=_SECTION)
class Config:
    name: Name = "experiment"
    smoke: Bool = False  # shrink to seconds: few images, 1 epoch, tiny size
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    source: str = ""  # the YAML file it came from (not a key of the file)

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able data."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        """The resolved config as a YAML file would hold it (config.yaml of every run)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        return _flatten(self.to_dict())

    def digest(self, section: str | None = None) -> str:
        """Identifies what this config (or one `section` of it) makes a step do: its resolved values, overrides
        included, and the content of the label-fix files it names (a path alone may be rewritten)."""
        values = self.to_dict() if section is None else self.to_dict()[section]
        digest = hashlib.blake2b(yaml.safe_dump(values, sort_keys=True).encode(), digest_size=16)
        for path in (self.data.exclude_ids, self.data.relabel):
            if path and section in (None, "data"):
                with open(path, "rb") as handle:
                    digest.update(hashlib.file_digest(handle, "blake2b").digest())
        return digest.hexdigest()

def _flatten(data: dict, prefix="") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out

