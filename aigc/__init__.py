"""aigc: MLflow experiment tracking for Kaggle-style image classification with Keras."""

import logging
import os

# TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the user's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's system-metrics monitor announces at INFO that a CPU machine has no GPU: only that line
# is dropped (a filter on this logger survives MLflow's own logging set-up).
logging.getLogger("mlflow.system_metrics.system_metrics_monitor").addFilter(
    lambda record: "Skip logging GPU metrics" not in record.getMessage())

__version__ = "0.1.0"
