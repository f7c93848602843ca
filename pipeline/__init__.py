"""Unsupervised anomaly detection in brain CT: DVC stages, Hydra config, MLflow tracking."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) buries the stage logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
