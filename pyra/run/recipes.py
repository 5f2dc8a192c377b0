"""Named training recipes: the optimiser settings plus the regularisation a model is built with.

    recipe = RECIPES["paper"]
    make_run_config(data, train_config=replace(recipe.train, epochs=100),
                    lora_dropout=recipe.lora_dropout, drop_path_rate=recipe.drop_path_rate)

"small-data" is every entry point's default (`TrainConfig()` is its training part); it was
chosen by `benchmarks/recipe_search.py` (docs/RESULTS.md). "paper" is the PYRA paper's GPU
recipe for VTAB-1k (docs/SCALE.md): one model per level, a fresh head, dropout and drop-path 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyra.run.train import TrainConfig

__all__ = ["Recipe", "RECIPES", "DEFAULT_RECIPE", "recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    train: TrainConfig
    lora_dropout: float  # dropout on the LoRA input
    drop_path_rate: float  # stochastic depth of the frozen backbone
    lora_rank: int = 4  # paper: ViT-S 4, ViT-B 8, ViT-L 12


DEFAULT_RECIPE = Recipe(
    "small-data", "a few CPU epochs on a few hundred images: head start, elastic sandwich training on the labels, no dropout",
    TrainConfig(), lora_dropout=0.0, drop_path_rate=0.0,
)
PAPER_RECIPE = Recipe(
    "paper", "the PYRA paper's VTAB-1k recipe (100 epochs on a GPU): one model per level, fresh head",
    TrainConfig(epochs=100, batch_size=32, lr=1e-3, pyra_lr=1e-3, weight_decay=1e-4, warmup_fraction=0.1,
                elastic="off", head_start=False),
    lora_dropout=0.1, drop_path_rate=0.1,
)
RECIPES: dict[str, Recipe] = {r.name: r for r in (DEFAULT_RECIPE, PAPER_RECIPE)}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
