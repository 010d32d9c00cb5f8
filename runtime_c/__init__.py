"""Portable C99 kernels and headers, shipped as package data."""
