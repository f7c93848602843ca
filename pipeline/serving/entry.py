"""The file MLflow loads the packaged detector from ("models from code": no pickled object)."""

import mlflow

from pipeline.serving.model import DetectorModel

mlflow.models.set_model(DetectorModel())
