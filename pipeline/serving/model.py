"""The detector as an MLflow pyfunc model: the code the registry's model runs when it is loaded and
served (`pipeline.stages.packaging` builds, logs and registers the model folder; nothing here does).

Input: a DataFrame with one column `image`, the bytes of an image file (PNG, JPEG, DICOM, ...); over
REST each is a base64 string (`{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}`).
Output: `score` and `is_anomaly` per row. With the inference parameter `maps` true (`predict(df,
params={"maps": True})`; over REST `"params": {"maps": true}` beside `dataframe_split`) each row also
gets `map` and `mask`, its anomaly map and anomaly mask on the input image's own pixel grid as PNG
files' bytes (`pipeline.detection.maps`: 16-bit, residual * 65535; 8-bit, 255 = anomalous), which the scoring
server's JSON gives as base64 strings (MIME style, a line break every 76 characters); a detector
packaged without a pixel threshold answers a maps request with a client error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.core.errors import PipelineError
from pipeline.data.images import Geometry, to_slice
from pipeline.detection import maps as maps_io
from pipeline.detection.detector import Detector

ARTIFACT = "detector"  # the Detector folder inside the MLflow model, and the model's name in a run
INPUT_COLUMN = "image"
LEVEL_COLUMN = "level"  # optional: the slice's place in its scan, 0 lowest .. 1 highest (empty: a lone slice)
MAPS = "maps"  # the inference parameter that asks for each row's anomaly map and mask


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.detector = Detector.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Score every row; a row that is not a decodable image fails the request with a client
        error naming the row and the reason (HTTP 400 from the scoring server). `params["maps"]`
        adds each row's anomaly map and mask as PNG bytes (columns `map` and `mask`)."""
        maps = (params or {}).get(MAPS) or False
        if not isinstance(maps, bool):
            raise MlflowException(
                f"the parameter '{MAPS}' must be a boolean, got {maps!r}", INVALID_PARAMETER_VALUE
            )
        if maps:
            try:
                maps_io.check_detector(self.detector)
            except PipelineError as err:
                raise MlflowException(f"parameter '{MAPS}': {err}", INVALID_PARAMETER_VALUE) from None
        if INPUT_COLUMN not in model_input.columns:
            raise MlflowException(
                f"the input needs a column '{INPUT_COLUMN}' with the bytes of an image file "
                f"(got columns {list(model_input.columns)})",
                INVALID_PARAMETER_VALUE,
            )
        values = model_input[INPUT_COLUMN].tolist()
        wrong = [i for i, value in enumerate(values) if not isinstance(value, bytes | bytearray)]
        if wrong:
            raise MlflowException(
                f"row {wrong[0]}: '{INPUT_COLUMN}' must be the bytes of an image file "
                f"(base64 in JSON), got {type(values[wrong[0]]).__name__}",
                INVALID_PARAMETER_VALUE,
            )
        batch = self.detector.decode([bytes(v) for v in values], [f"row {i}" for i in range(len(values))])
        if batch.errors:
            raise MlflowException(
                "; ".join(f"row {i}: {reason}" for i, reason in batch.errors.items()), INVALID_PARAMETER_VALUE
            )
        reconstructions, scores = self.detector.reconstruct_and_score(batch.images, _levels(model_input))
        scores = scores.astype("float64")
        result = pd.DataFrame({"score": scores, "is_anomaly": self.detector.is_anomaly(scores)})
        if maps:  # every row decoded (an error fails the request), so row i is input row i
            residuals = self.detector.residual_maps(batch.images, reconstructions)
            pngs = [
                self._map_and_mask(residual, geometry)
                for residual, geometry in zip(residuals, batch.geometries, strict=True)
            ]
            result["map"] = [map_png for map_png, _ in pngs]
            result["mask"] = [mask_png for _, mask_png in pngs]
        return result

    def _map_and_mask(self, residual: np.ndarray, geometry: Geometry) -> tuple[bytes, bytes]:
        """One row's residual map (on the model's grid) -> its map and mask PNGs on its image's grid."""
        anomaly_map = to_slice(residual, geometry)
        return maps_io.map_png(anomaly_map), maps_io.mask_png(self.detector.anomaly_mask(anomaly_map))


def _levels(model_input: pd.DataFrame) -> np.ndarray | None:
    """The rows' places in their scans (`level`), where given; a value outside 0..1 fails the request."""
    if LEVEL_COLUMN not in model_input.columns:
        return None
    levels = pd.to_numeric(model_input[LEVEL_COLUMN], errors="coerce").to_numpy(dtype=float)
    wrong = np.flatnonzero((levels < 0) | (levels > 1))
    if len(wrong):
        raise MlflowException(
            f"row {wrong[0]}: '{LEVEL_COLUMN}' is the slice's place in its scan, 0 (lowest) to 1 (highest), "
            f"got {levels[wrong[0]]}",
            INVALID_PARAMETER_VALUE,
        )
    return levels
