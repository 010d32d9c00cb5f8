"""Kept for passes/lower.py only: the activation dtype rewrite lives in fwedge.quantization.activation_dtype."""
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations, uint8_activations

__all__ = ["activation_dtypes", "int8_activations", "uint8_activations"]
