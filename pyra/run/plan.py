"""What a comparison will ask of the machine, known before anything is trained.

    config = within_memory(data, config, limit_bytes)  # micro-batches if the whole batch would not fit
    plan = plan_compare(data, config)
    plan.trainings, plan.steps, plan.training_memory_bytes

The memory estimate is for one training as a comparison runs it: building the model from its
weights, the head start's features, the training passes (activations kept for the backward
pass) and validation; every inference pass runs at the training's forward batch (the whole batch,
or its micro-batch), so the training pass is the largest. A micro-batched step computes the same
gradient as the whole batch (pyra.run.train), so fitting memory costs time, not accuracy.
Measured by benchmarks/train_memory.py on the default DINOv2 ViT-S/14 at 2 threads
(docs/perf/train_memory.json): about 170 MB at batch 1 and 112 px, plus 75-85 bytes per
(image x token x layer x channel) at 65-1025 tokens and batch 1-64, and more in the app's server
(benchmarks/space_abuse.py), most at large token counts: a term in tokens squared (the attention
weights) covers that; the estimate is above every measured peak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from timm.models import VisionTransformer

from pyra.backbones.factory import backbone_structure
from pyra.data.datasets import DatasetSplit
from pyra.method.elastic import LevelSampler
from pyra.run.compare import planned_jobs
from pyra.run.comparison import CompareConfig

__all__ = ["ComparePlan", "plan_compare", "within_memory", "training_memory_bytes", "largest_forward_batch",
           "micro_batch_for", "ACTIVATION_BYTES", "ATTENTION_BYTES", "FIXED_BYTES"]


ACTIVATION_BYTES = 88  # per image x token x layer x channel of one training pass (measured 75-85)
ATTENTION_BYTES = 8  # per image x head x token x token x layer: attention weights and their gradient, float32,
# if the backward keeps them (SDPA with the proportional-attention mask may); covers what the app's server
# measured at 577 tokens (336 px), where the linear terms alone fell short (benchmarks/space_abuse.py --quick)
FIXED_BYTES = 288 * 2**20  # besides the weights: building the model, optimiser, allocator, threads: about 80 MB
# in a process of its own (benchmarks/train_memory.py), up to 90 MB more in the app's server after a minute of
# training (benchmarks/space_abuse.py)


@dataclass(frozen=True)
class ComparePlan:
    """The size of a comparison: how many trainings, how many steps, how much memory."""

    trainings: int  # models trained (seeds x methods, x levels for the per-level protocol)
    steps: int  # optimiser steps over all trainings
    passes: int  # forward + backward passes over all trainings (an elastic step makes several)
    img_size: int
    tokens: int  # tokens per image entering the first block
    batch_size: int
    forward_batch: int  # images per forward + backward pass (the batch, or its micro-batch)
    training_memory_bytes: int  # estimated peak added by one training (see the module docstring)


def training_memory_bytes(structure: VisionTransformer, forward_batch: int) -> int:
    """Estimated memory one training adds: activations of one pass of `forward_batch` images + weights + overhead.

    `structure` is the backbone at its input size (e.g. `pyra.backbones.factory.backbone_structure`).
    """
    return forward_batch * _activation_bytes_per_image(structure) + _weights_and_fixed_bytes(structure)


def largest_forward_batch(structure: VisionTransformer, batch_size: int, limit_bytes: int) -> int:
    """The most images per pass, at most `batch_size`, whose training estimate fits `limit_bytes` (0: not even one)."""
    room = limit_bytes - _weights_and_fixed_bytes(structure)
    return max(0, min(batch_size, room // _activation_bytes_per_image(structure)))


def micro_batch_for(structure: VisionTransformer, batch_size: int, limit_bytes: int) -> int:
    """Images per pass for a batch of `batch_size` within `limit_bytes`: the fewest passes that fit, of even
    sizes (16 as 8 + 8, not 13 + 3); `batch_size` itself if it fits, 1 if nothing does."""
    fits = max(1, largest_forward_batch(structure, batch_size, limit_bytes))
    return math.ceil(batch_size / math.ceil(batch_size / fits))


def _activation_bytes_per_image(structure: VisionTransformer) -> int:
    tokens = structure.patch_embed.num_patches + structure.num_prefix_tokens
    heads = structure.blocks[0].attn.num_heads
    return len(structure.blocks) * tokens * (structure.embed_dim * ACTIVATION_BYTES + heads * tokens * ATTENTION_BYTES)


def _weights_and_fixed_bytes(structure: VisionTransformer) -> int:
    return 4 * sum(p.numel() for p in structure.parameters()) + FIXED_BYTES


def within_memory(data: DatasetSplit, config: CompareConfig, limit_bytes: int) -> CompareConfig:
    """`config` training in `micro_batch_for` its batch and `limit_bytes` (unchanged if its batch fits; one image
    per pass if none fits, so that `plan_compare` shows the smallest estimate to refuse)."""
    _, img_size = planned_jobs(data, config)
    structure = backbone_structure(config.backbone, len(data.classes), img_size)
    micro_batch = micro_batch_for(structure, config.train.forward_batch, limit_bytes)
    if micro_batch == config.train.forward_batch:
        return config
    return replace(config, train=replace(config.train, micro_batch=micro_batch))


def plan_compare(data: DatasetSplit, config: CompareConfig) -> ComparePlan:
    """The plan of `run_compare(data, config, ...)`, from the structure alone (no weights, no download)."""
    jobs, img_size = planned_jobs(data, config)
    structure = backbone_structure(config.backbone, len(data.classes), img_size)
    steps_per_training = config.train.epochs * math.ceil(len(data.train) / config.train.batch_size)
    merging = sum(1 for _, name, _ in jobs if name != "uncompressed")
    passes_per_step = len(LevelSampler(config.train.elastic, 0).draw()) if config.protocol == "elastic" else 1
    passes = steps_per_training * ((len(jobs) - merging) + merging * passes_per_step)
    return ComparePlan(
        trainings=len(jobs), steps=steps_per_training * len(jobs), passes=passes, img_size=img_size,
        tokens=structure.patch_embed.num_patches + structure.num_prefix_tokens, batch_size=config.train.batch_size,
        forward_batch=config.train.forward_batch,
        training_memory_bytes=training_memory_bytes(structure, config.train.forward_batch),
    )
