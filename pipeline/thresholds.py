"""Decision thresholds calibrated on healthy validation reconstruction errors.

The autoencoder only ever sees healthy slices, so the threshold is set from the
spread of healthy errors alone: a slice is flagged when its error is strictly
greater than the threshold.
"""

import numpy as np


def mean_std_threshold(errors: np.ndarray, k: float = 1.0) -> float:
    """Return mean + k * std of healthy validation errors (population std, ddof=0).

    ddof=0 (numpy's default) matches the original method, so thresholds stay
    comparable with its published numbers.
    """
    values = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot calibrate a threshold from an empty array of errors")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"errors must be finite; got {np.count_nonzero(~np.isfinite(values))} "
            "NaN or infinite value(s)"
        )
    if not np.isfinite(k):
        raise ValueError(f"k must be finite, got {k}")
    return float(values.mean() + k * values.std())
