"""Numbers from predictions: metrics, statistics (intervals, tests, calibration), groups,
saliency."""
