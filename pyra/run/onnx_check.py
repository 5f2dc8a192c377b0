"""Check an exported model in onnxruntime against the torch model, merges included.

Token merging ranks similarities, so two runtimes whose float rounding differs by 1e-7 can merge
different tokens where similarities are tied that closely: with hundreds of tokens (336 px) that
happens on most images, and PYRA, which weights each source by its rank, then gives other logits.
So the check graph also returns every merging layer's matching, and the torch model is run again
with onnxruntime's matchings (`pyra.method.patch.replaying`). The export is right when
- with the same merges, the logits agree to `LOGIT_TOLERANCE`;
- each of onnxruntime's matchings is the best one for torch's own similarities, to within
  `TIE_TOLERANCE` (`pyra.method.merge.matching_shortfall`): only near-ties were ordered otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pyra.method.merge import Matching, matching_shortfall
from pyra.method.patch import replaying

LOGIT_TOLERANCE = 1e-4  # largest |onnxruntime - torch| logit difference accepted with the same merges
TIE_TOLERANCE = 1e-4  # largest cosine-similarity shortfall of onnxruntime's matchings on torch's similarities
MATCHING_PARTS = ("src", "dst", "kept", "scores")  # the Matching fields, in order, per merging layer


class WithMatchings(nn.Module):
    """A patched model that also returns every merging layer's matching: (logits, then per merging layer
    src [B, r], dst [B, r], kept [B, N_A - r] int64 and scores [B, r] float)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        logits = self.model(image)
        parts: list[Tensor] = []
        for _, m in _records(self.model):
            parts += [m.src_idx, m.dst_idx, m.unm_idx, m.scores]
        return (logits, *parts)


def matching_names(model: nn.Module) -> list[str]:
    """Output names of `WithMatchings(model)` after the logits, e.g. "layer0.src" (none for an unpatched model)."""
    config = getattr(model, "merge_config", None)
    if config is None or config.method == "none":
        return []
    return [f"layer{i}.{part}" for i, r in enumerate(config.schedule) if r > 0 for part in MATCHING_PARTS]


def _records(model: nn.Module) -> list[tuple[Tensor, Matching]]:
    """(metric, matching) of each merging layer in `model`'s last forward (none for an unpatched model)."""
    state = getattr(model, "merge_state", None)
    return state.matchings if state is not None else []


@dataclass(frozen=True)
class ExportCheck:
    """How onnxruntime's run of the check graph compares with the torch model on the check images."""

    check_images: int
    max_abs_difference: float  # |onnxruntime - torch| logits, torch replaying onnxruntime's merges
    max_shortfall: float  # the worst of onnxruntime's matchings on torch's similarities (0: the same choices)
    near_tie_images: int  # images on which onnxruntime merged other (near-tied) tokens than torch
    near_tie_max_abs_difference: float  # |onnxruntime - torch| logits on those, each merging its own choice

    def describe(self) -> str:
        """The check's outcome in a sentence or two, for a person."""
        images = "the check image" if self.check_images == 1 else f"the {self.check_images} check images"
        text = f"onnxruntime's logits were within {self.max_abs_difference:.1e} of torch's on {images}, merging the same tokens."
        if self.near_tie_images:
            which = "On it" if self.check_images == 1 else f"On {self.near_tie_images} of them"
            tied = f"to within {self.max_shortfall:.0e}" if self.max_shortfall > 0 else "exactly in torch"
            text += (f" {which}, similarities tied {tied} rounded differently in the two runtimes, so each "
                     f"merged other tokens and the logits differed by up to {self.near_tie_max_abs_difference:.2g}.")
        return text

    def problem(self) -> str | None:
        """What makes the export wrong, in words, or None when it is right."""
        if not self.max_shortfall <= TIE_TOLERANCE:
            return (f"onnxruntime merged tokens that are not the most similar (short by {self.max_shortfall:.2e} in "
                    f"cosine similarity, more than {TIE_TOLERANCE:g})")
        if not self.max_abs_difference <= LOGIT_TOLERANCE:
            return (f"the exported model's logits differ from the torch model's by {self.max_abs_difference:.2e} with "
                    f"the same merges, more than {LOGIT_TOLERANCE:g}")
        return None


def check_outputs(model: nn.Module, images: Tensor, outputs: list[np.ndarray]) -> ExportCheck:
    """images [B, 3, H, W]; outputs: onnxruntime's run of `WithMatchings(model)`'s export on them."""
    logits, parts = torch.from_numpy(outputs[0]), [torch.from_numpy(p) for p in outputs[1:]]
    protected = model.num_prefix_tokens
    matchings = [Matching(*parts[i:i + len(MATCHING_PARTS)], num_protected=protected)
                 for i in range(0, len(parts), len(MATCHING_PARTS))]
    with torch.no_grad():
        own = model(images)
        own_matchings = [m for _, m in _records(model)]
        with replaying(model, matchings):
            replayed = model(images)
        replayed_records = _records(model)
    batch = images.shape[0]
    shortfall = torch.zeros(batch)
    for metric, matching in replayed_records:
        shortfall = torch.maximum(shortfall, matching_shortfall(metric, matching))
    differs = torch.zeros(batch, dtype=torch.bool)
    for mine, theirs in zip(own_matchings, matchings):
        differs |= (mine.src_idx != theirs.src_idx).any(dim=1) | (mine.dst_idx != theirs.dst_idx).any(dim=1)
    as_is = (logits - own).abs().amax(dim=1)  # [B]
    return ExportCheck(
        check_images=batch,
        max_abs_difference=float((logits - replayed).abs().max()),
        max_shortfall=float(shortfall.max()),
        near_tie_images=int(differs.sum()),
        near_tie_max_abs_difference=float(as_is[differs].max()) if differs.any() else 0.0,
    )
