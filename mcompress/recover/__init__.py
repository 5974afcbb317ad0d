"""Calibration-based recovery: layer statistics from onnxruntime runs, numpy reconstruction."""
