"""aigc: MLflow experiment tracking for Kaggle-style image classification with Keras."""

import atexit
import gc
import logging
import os

from aigc import quiet

# Python's full collection walks every object the process holds, and TensorFlow, Keras, MLflow and scikit-learn
# import ~0.5 M that live as long as it does. At the default (one full collection per 10 of the middle generation)
# a one-epoch train ran 9 of them, most while importing: 1.8 s, and 19.5 -> 17.2 s of CPU without them (2 cores).
# Young objects are collected as often as before; a full collection comes every ~7 M allocations instead of ~70 k.
gc.set_threshold(*gc.get_threshold()[:2], 1000)
# At exit, Python's finalisation collects again and again while it tears modules down: with TensorFlow loaded,
# ~2.6 s after a train's last line. Frozen objects are skipped by those collections (still freed by reference
# counting). Registered as aigc is imported, the first thing every command does, so the exit handlers registered
# after it (MLflow ending runs, temp folders removed) run before it.
atexit.register(gc.freeze)

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
