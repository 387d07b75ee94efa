"""Which number format training computes in: train.precision, or what this machine computes fastest."""

from __future__ import annotations

import tensorflow as tf

from aigc.config import TrainConfig


def precision_policy(train: TrainConfig) -> str:
    """The Keras dtype policy train.precision names (auto: what this machine computes fastest)."""
    if train.mixed_precision and train.precision == "float32":  # the former switch
        return "mixed_float16"
    return auto_precision() if train.precision == "auto" else train.precision


def auto_precision() -> str:
    """mixed_float16 on a GPU with tensor cores (compute capability 7+), mixed_bfloat16 on a CPU whose
    oneDNN kernels have bfloat16 units (AMX or AVX512-BF16), else float32."""
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (7, 0):
            return "mixed_float16"
    return "mixed_bfloat16" if cpu_flags() & {"amx_bf16", "avx512_bf16"} else "float32"


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open(path) as info:
            return {flag for line in info if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()
