"""Is the shipped default backbone really pretrained? LoRA fine-tuning on the Fashion-MNIST
sample, default (DINOv2 ViT-S/14 weights) vs the same architecture at random init.

    python benchmarks/backbone_quality.py                      # writes docs/results/backbone_quality.json
    python benchmarks/backbone_quality.py --quick --out /tmp/q # one epoch on 20 images per class, smoke test

Prints accuracy with its 95% Wilson interval and the training time of each run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from pyra.data.datasets import load_dataset
from pyra.report.tables import machine_info
from pyra.run.one_run import make_run_config, train_run
from pyra.run.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run(backbone: str, epochs: int, out: Path, max_per_class: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        data = load_dataset("sample:fashion", Path(workdir), max_per_class=max_per_class)
        train_config = TrainConfig(epochs=epochs, batch_size=16, lr=5e-3, pyra_lr=5e-3, head_start=False)  # fresh head
        config = make_run_config(data, backbone=backbone, img_size=112, method="none", lora_rank=4,
                                 lora_dropout=0.0, drop_path_rate=0.0, train_config=train_config)
        _, result, report = train_run(data, config, out / backbone.replace(":", "_"))
    return {
        "backbone": backbone,
        "epochs": epochs,
        "train_seconds": round(result.seconds, 1),
        "accuracy": report.accuracy,
        "accuracy_low": report.low,
        "accuracy_high": report.high,
        "n_val": report.n,
        "val_accuracy_per_epoch": [e["val_accuracy"] for e in result.epochs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch on 20 images per class")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="writes <out>/results/ (default docs/)")
    args = parser.parse_args()
    epochs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as runs:
        results = [run(name, epochs, Path(runs), 20 if args.quick else None)
                   for name in ("default", "random:vit_small_patch14_dinov2")]
    machine = machine_info()
    report = {
        "command": "python benchmarks/backbone_quality.py" + (" --quick" if args.quick else ""),
        "machine": f"{machine['cpu']}, {machine['cores']} cores, {torch.get_num_threads()} torch threads",
        "settings": "sample:fashion (60 train / 20 val per class), 112 px, LoRA rank 4 on qkv, batch 16, "
                    "lr 5e-3, AdamW, cosine with 10% warm-up, no drop-path, no LoRA dropout",
        "results": results,
    }
    path = args.out / "results" / f"backbone_quality{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    for r in results:
        print(f"{r['backbone']:<36} {r['accuracy']:.1%} [{r['accuracy_low']:.1%}, {r['accuracy_high']:.1%}] "
              f"n={r['n_val']}  {r['train_seconds']:.0f}s  per epoch {r['val_accuracy_per_epoch']}")


if __name__ == "__main__":
    main()
