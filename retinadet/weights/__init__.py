"""Weights: our checkpoints, torchvision's RetinaNet, ImageNet backbones and seed imports."""
