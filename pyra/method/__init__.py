"""The paper's method on a timm ViT: token merging (ToMe), PYRA's modulation of merged tokens, LoRA,
merge schedules and elastic levels. Imports nothing else of `pyra`."""
