"""Pretrained backbones: timm names, local weight files, and the offline default (DINOv2 ViT-S/14)."""
