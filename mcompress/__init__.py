"""mcompress: make ONNX models smaller and faster without silently breaking them."""

__version__ = "0.1.0"
