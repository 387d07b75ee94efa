"""Typed, frozen experiment config: one YAML file + dotted command-line overrides.

Every section is a frozen dataclass; `load()` rejects unknown keys, wrong types
and impossible values with a message naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from aigc.errors import UserError

LAYOUTS = ("auto", "gic", "deepfake", "folders")


@dataclass(frozen=True)
class DataConfig:
    layout: Literal["auto", "gic", "deepfake", "folders"] = "auto"
    image_size: int = 64  # square side the images are resized to
    batch_size: int = 64
    num_classes: int = 0  # 0: one more than the largest label seen
    val_fraction: float = 0.1  # folders layout only: held out from train, by hash of id
    limit: int = 0  # at most this many images per split (0: all); used by smoke runs
    oversample: dict = field(default_factory=dict)  # {class: factor, "default": factor}
    class_weights: Literal["none", "balanced"] = "none"
    cache_dir: str = ".aigc-cache"
    workers: int = 0  # decode threads for the cache build (0: one per core)

    def check(self, where):
        _positive(where, "data.image_size", self.image_size, minimum=8)
        _positive(where, "data.batch_size", self.batch_size)
        if not 0 < self.val_fraction < 1:
            raise UserError(f"{where}: data.val_fraction must be between 0 and 1, got {self.val_fraction}")
        for key, factor in self.oversample.items():
            if not (key == "default" or isinstance(key, int)) or not isinstance(factor, int) or factor < 1:
                raise UserError(
                    f"{where}: data.oversample.{key}: expected class number (or 'default') "
                    f"-> integer factor >= 1, got {factor!r}"
                )


@dataclass(frozen=True)
class AugmentConfig:
    """Same numbers and meanings as Keras 2's ImageDataGenerator."""

    rotation: float = 0.0  # degrees
    width_shift: float = 0.0  # fraction of width
    height_shift: float = 0.0
    shear: float = 0.0  # degrees
    zoom: float = 0.0  # zoom in [1 - z, 1 + z]
    brightness: Optional[tuple[float, float]] = None  # multiply by a factor in [lo, hi]
    horizontal_flip: bool = False
    vertical_flip: bool = False
    channel_shift: float = 0.0  # pixel units (0..255)
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 = off
    mixup: float = 0.0
    on_device: bool = False  # run the augmentation layers in the model (GPU) instead of tf.data (CPU)

    def check(self, where):
        for name in ("rotation", "width_shift", "height_shift", "shear", "zoom", "channel_shift", "cutmix", "mixup"):
            if getattr(self, name) < 0:
                raise UserError(f"{where}: augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.brightness and not 0 <= self.brightness[0] <= self.brightness[1]:
            raise UserError(f"{where}: augment.brightness must be [low, high] with 0 <= low <= high")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet"  # a key of aigc.models.MODELS
    params: dict = field(default_factory=dict)  # keyword arguments of that builder

    def check(self, where):
        if not self.name:
            raise UserError(f"{where}: model.name is empty")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stops training; the final weights are always the best epoch's (train.checkpoint_monitor)."""

    monitor: str = "val_loss"
    patience: int = 10


@dataclass(frozen=True)
class PlateauConfig:
    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 15
    min_lr: float = 1e-5


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # adamw
    momentum: float = 0.9  # sgd
    schedule: Literal["constant", "exponential", "cosine"] = "constant"
    decay_steps: int = 1000  # exponential / cosine
    decay_rate: float = 0.95  # exponential
    plateau: Optional[PlateauConfig] = None  # ReduceLROnPlateau (constant schedule only)
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint_monitor: str = "val_accuracy"  # the best epoch, restored at the end
    label_smoothing: float = 0.0
    seed: int = 42
    deterministic: bool = False  # tf op determinism: reproducible, slower
    mixed_precision: bool = False  # GPUs: float16 compute
    jit_compile: bool = False  # XLA

    def check(self, where):
        _positive(where, "train.epochs", self.epochs)
        if self.learning_rate <= 0:
            raise UserError(f"{where}: train.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"{where}: train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.plateau and self.schedule != "constant":
            raise UserError(f"{where}: train.plateau needs train.schedule: constant (a schedule owns the rate)")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True  # false: `train` writes its results to aigc-runs/ instead of MLflow
    experiment: str = "aigc"
    registered_model: str = "aigc-classifier"
    metric: Literal["auto", "accuracy", "f1_macro", "f1_weighted"] = "auto"  # auto: by layout
    min_improvement: float = 0.0  # promote: champion moves only past this margin
    log_model: bool = True
    log_system_metrics: bool = True


@dataclass(frozen=True)
class TuneConfig:
    algorithm: Literal["random", "hyperband", "bayesian"] = "random"
    max_trials: int = 15
    epochs: int = 20  # per trial
    objective: str = "val_accuracy"
    space: dict = field(default_factory=dict)  # overrides of the tunable model's choices
    retrain_epochs: int = 0


@dataclass(frozen=True)
class Config:
    name: str = "experiment"
    smoke: bool = False  # shrink to seconds: few images, 1 epoch, tiny size
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
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


SMOKE = {
    "data.limit": 48,
    "data.image_size": 32,
    "data.batch_size": 16,
    "train.epochs": 1,
    "tune.max_trials": 2,
    "tune.epochs": 1,
    "tune.retrain_epochs": 1,
}


def load(path: str | Path | None, overrides: str | list[str] | dict | None = None, smoke: bool = False) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate, and freeze it."""
    where = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"config file {path} not found: pass an existing YAML file (see configs/)") from None
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping of sections at the top level")
    if smoke:
        raw["smoke"] = True
    if raw.get("smoke"):
        for key, value in SMOKE.items():
            section, name = key.split(".")
            current = (raw.get(section) or {}).get(name)
            unset = current is None or (key == "data.limit" and current == 0)  # limit 0 means all
            # shrink, never grow: a config already smaller than smoke keeps its value (0 stays 0)
            _set_dotted(raw, key, value if unset else min(current, value), where)
    # explicit overrides win over the smoke shrink
    for key, value in parse_overrides(overrides).items():
        _set_dotted(raw, key, value, where)
    config = _build(Config, raw, where, prefix="")
    config = dataclasses.replace(config, source=where)
    for section in (config.data, config.augment, config.model, config.train):
        section.check(where)
    return config


def parse_overrides(overrides) -> dict[str, Any]:
    """'train.epochs=3 data.batch_size=32' (or a list / dict) -> {key: typed value}."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    items = overrides.split() if isinstance(overrides, str) else list(overrides)
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: value is not valid YAML") from None
    return parsed


def _set_dotted(raw: dict, key: str, value, where):
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{where}: override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, raw, where, prefix):
    """Build dataclass `cls` from a dict, checking keys and types against its hints."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(
            f"{where}: unknown key {prefix}{unknown[0]}; known keys here: {', '.join(sorted(names))}"
        )
    values = {name: _coerce(hints[name], raw[name], where, prefix + name) for name in raw}
    return cls(**values)


def _coerce(hint, value, where, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key + ".")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{where}: {key} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(a, v, where, key) for a, v in zip(args, value))
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise UserError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
    return value


def _positive(where, key, value, minimum=1):
    if value < minimum:
        raise UserError(f"{where}: {key} must be >= {minimum}, got {value}")


def _flatten(data: dict, prefix="") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
