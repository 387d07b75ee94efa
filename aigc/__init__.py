"""aigc: MLflow experiment tracking for Kaggle-style image classification with Keras."""

import logging
import os

from aigc import quiet

# TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the user's output: what it logs
# while running obeys this variable, what its libraries log while loading does not (aigc.quiet).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
quiet.install()
# MLflow's system-metrics monitor announces at INFO that a CPU machine has no GPU: only that line
# is dropped (a filter on this logger survives MLflow's own logging set-up).
logging.getLogger("mlflow.system_metrics.system_metrics_monitor").addFilter(
    lambda record: "Skip logging GPU metrics" not in record.getMessage())
# TensorFlow counts traces per Python function, not per model: every fold, trial and TTA pass builds a new
# model whose predict function is traced (once, or twice for a new batch shape), and after five of them TF
# warns of "retracing" and advises moving the tf.function out of a loop, which does not apply here.
logging.getLogger("tensorflow").addFilter(
    lambda record: "triggered tf.function retracing" not in record.getMessage())

__version__ = "0.1.0"
