"""Torch-free helpers shared by every layer: run folders and atomic writes, image sources, devices."""
