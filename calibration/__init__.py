"""Calibration: streaming statistics and range methods (minmax, percentile, kl, mse)."""
