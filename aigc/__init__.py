"""aigc: MLflow experiment tracking for Kaggle-style image classification with Keras."""

import os

# TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the user's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
