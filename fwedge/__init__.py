"""fwedge: compress trained ONNX models and ship them to edge devices, gated on-device."""
__version__ = "0.1.0"
