"""Model construction in one thread while others build, train or predict: the same weights as alone."""
from __future__ import annotations

import threading

import torch
from torch.utils.data import TensorDataset

from pyra.run.predict import predict
from pyra.run.run_config import RunConfig, build_model
from pyra.run.train import TrainConfig, train

CONFIG = RunConfig(backbone="random:vit_tiny_patch16_224", img_size=32, num_classes=3, classes=("a", "b", "c"),
                   schedule=(1, 1, 1) + (0,) * 9, method="pyra", lora_dropout=0.1, drop_path_rate=0.1)


def lora_a(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.flatten() for name, p in model.named_parameters() if "lora_a" in name.lower()])


def test_a_model_built_while_others_build_train_or_predict_is_the_one_built_alone():
    alone = build_model(CONFIG)
    built: list[torch.nn.Module] = []
    trainee, predictor = build_model(CONFIG), build_model(CONFIG)
    images = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 3, (64,)))
    others = [threading.Thread(target=lambda: built.extend(build_model(CONFIG) for _ in range(3))),
              threading.Thread(target=train, args=(trainee, images, TrainConfig(epochs=3, batch_size=8))),
              threading.Thread(target=lambda: [predict(predictor, images, batch_size=1) for _ in range(3)])]
    for thread in others:
        thread.start()
    built += [build_model(CONFIG) for _ in range(3)]
    for thread in others:
        thread.join()
    for model in built:
        assert model.backbone_fingerprint == alone.backbone_fingerprint  # load_run's check
        assert torch.equal(lora_a(model), lora_a(alone))  # the seed's LoRA init
