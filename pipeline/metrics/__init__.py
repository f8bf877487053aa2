"""Calibration and OOD-detection metrics: pure numpy."""
