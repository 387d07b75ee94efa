"""The experiment config: one YAML file + dotted command-line overrides -> a typed, frozen Config.

`schema` says which values are allowed (each section a frozen pydantic dataclass); `loading` reads a file
or a run's config.yaml into it and turns every mistake into one message naming the file and the key.
"""

from aigc.config.loading import MAX_FILE_BYTES, SMOKE, load, load_text, parse_overrides
from aigc.config.schema import (LAYOUTS, AugmentConfig, Config, CvConfig, DataConfig, EarlyStoppingConfig,
                                EnsembleConfig, ModelConfig, PlateauConfig, PseudoLabelConfig, TrackingConfig,
                                TrainConfig, TuneConfig)

__all__ = ["LAYOUTS", "MAX_FILE_BYTES", "SMOKE", "AugmentConfig", "Config", "CvConfig", "DataConfig",
           "EarlyStoppingConfig", "EnsembleConfig", "ModelConfig", "PlateauConfig", "PseudoLabelConfig",
           "TrackingConfig", "TrainConfig", "TuneConfig", "load", "load_text", "parse_overrides"]
