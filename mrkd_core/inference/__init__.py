"""Inference a production line can act on: calibration, predictions, export.

- ``calibration``: image and pixel thresholds (F1-optimal or a target false-alarm rate on
  held-out defect-free images), their normalisation and provenance, stored in the model file;
- ``predict``: per-image score, normalised score, verdict, defect mask and overlay at the
  input's size, from a ``model.pt`` (PyTorch) or an ``.onnx`` export (ONNX Runtime);
- ``export``: one ONNX graph from a normalised batch to map and score, calibration and
  preprocessing in its metadata.

docs/inference.md describes the whole.
"""

from mrkd_core.inference.calibration import (
    DEFAULT_FALSE_ALARM_RATE,
    POLICIES,
    Calibration,
    calibrate,
    calibrate_after_training,
    calibrate_model,
)
from mrkd_core.inference.predict import PREDICTIONS_SCHEMA, Prediction, PredictionReport, Predictor, predict_images

__all__ = [
    "DEFAULT_FALSE_ALARM_RATE", "POLICIES", "PREDICTIONS_SCHEMA", "Calibration", "Prediction", "PredictionReport",
    "Predictor", "calibrate", "calibrate_after_training", "calibrate_model", "predict_images",
]
