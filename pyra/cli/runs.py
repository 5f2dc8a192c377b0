"""The run commands of `python -m pyra`: samples, train, eval, compare, tokens, export.

Each `_add_<command>` declares its arguments, each `run_<command>` runs it and prints a
summary (or only JSON with --json). Progress goes to stderr as one updating line when
stderr is a terminal.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from pyra.cli.executor_args import add_executor_arguments, executor_from
from pyra.data.datasets import DatasetSplit, load_dataset
from pyra.data.limits import DataError
from pyra.data.samples import list_samples
from pyra.method.elastic import ELASTIC_MODES
from pyra.method.parameters import parameter_report
from pyra.method.patch import geometry
from pyra.method.schedule import METHODS, flops_ratio, forward_flops, parse_schedule, resolve_schedule, tokens_per_layer
from pyra.report.traces import token_maps
from pyra.run.checkpoint import load_config
from pyra.run.compare import run_compare
from pyra.run.comparison import PROTOCOLS, CompareConfig, protocol_for
from pyra.run.devices import default_device
from pyra.run.one_run import evaluate_run, make_run_config, train_run
from pyra.run.recipes import DEFAULT_RECIPE, RECIPES, recipe
from pyra.run.run_config import RunConfig
from pyra.run.speed import measure_speed
from pyra.run.train import TrainConfig


def emit(result: dict[str, Any], text: str, as_json: bool) -> None:
    """Print `result` as JSON (only JSON on stdout) or the human-readable `text`."""
    print(json.dumps(result, indent=2) if as_json else text)


class ProgressLine:
    """One updating progress line on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, progress: Any) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * progress.fraction)
        eta = f" ETA {progress.eta_s:4.0f}s" if getattr(progress, "eta_s", None) is not None else ""
        message = getattr(progress, "message", None) or f"step {progress.step}/{progress.total_steps} loss {progress.loss:.3f}"
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {message[:70]:<70}{eta}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, help="a .zip, a folder (one sub-folder per class) or sample:NAME")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of each class for validation")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")


def _load_data(source: str, workdir: Path, val_fraction: float, split_seed: int,
               max_per_class: Optional[int] = None) -> DatasetSplit:
    return load_dataset(source, workdir, val_fraction=val_fraction, seed=split_seed, max_per_class=max_per_class)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="default",
                        help="'default' (shipped DINOv2 ViT-S/14), a timm ViT name, or random:NAME")
    parser.add_argument("--weights", help="local weights file for the --backbone architecture")
    parser.add_argument("--img-size", type=int, help="input size (default: 8x8 patches on CPU, 224 on GPU)")
    parser.add_argument("--schedule", default="high", help="low, high, r, r1,r2,..., a FLOPs ratio like 2.5, r@inflection")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE.name,
                        help="defaults for every training setting below: " +
                             "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()))
    parser.add_argument("--epochs", type=int, help="(default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    parser.add_argument("--micro-batch", type=int,
                        help="images per forward + backward pass, for less memory: the same gradients, more time "
                             "(default: the whole batch)")
    parser.add_argument("--lr", type=float, help="LoRA + head learning rate (default: the recipe's)")
    parser.add_argument("--pyra-lr", type=float, help="PYRA learning rate (default: the recipe's)")
    parser.add_argument("--lora-rank", type=int, default=DEFAULT_RECIPE.lora_rank)
    parser.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (paper: 0.1)")
    parser.add_argument("--drop-path", type=float, help="stochastic depth rate (paper: 0.1)")
    elastic = parser.add_mutually_exclusive_group()
    elastic.add_argument("--elastic", nargs="?", const=TrainConfig.elastic,
                         choices=tuple(m for m in ELASTIC_MODES if m != "off"),
                         help="train a merging model for every level from uncompressed to --schedule "
                              f"(default with the small-data recipe: {TrainConfig.elastic})")
    elastic.add_argument("--no-elastic", dest="elastic", action="store_const", const="off",
                         help="train at --schedule only")
    parser.add_argument("--head-start", action=argparse.BooleanOptionalAction, default=None,
                        help="fit the head by logistic regression on frozen features before fine-tuning")
    parser.add_argument("--json", action="store_true", help="print only JSON")


def _train_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The recipe's TrainConfig with every flag the user gave put over it."""
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "micro_batch": args.micro_batch, "lr": args.lr,
             "pyra_lr": args.pyra_lr, "elastic": args.elastic, "head_start": args.head_start}
    return replace(recipe(args.recipe).train, seed=seed, **{k: v for k, v in given.items() if v is not None})


def _regularisation(args: argparse.Namespace) -> dict[str, float]:
    chosen = recipe(args.recipe)
    return {"lora_dropout": chosen.lora_dropout if args.lora_dropout is None else args.lora_dropout,
            "drop_path_rate": chosen.drop_path_rate if args.drop_path is None else args.drop_path}


# ---------------------------------------------------------------------------------------- samples


def _add_samples(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("samples", help="list the built-in datasets (use as --data sample:NAME)")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_samples)


def run_samples(args: argparse.Namespace) -> int:
    samples = [asdict(info) for info in list_samples()]
    text = "\n".join(f"sample:{s['name']:<10} {s['num_classes']:>3} classes {s['num_images']:>5} images  "
                     f"{s['description']} ({s['licence']})" for s in samples)
    emit({"samples": samples}, text, args.json)
    return 0


# ---------------------------------------------------------------------------------------- train


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train one model (LoRA + PYRA, ToMe, or no merging) into a run folder")
    _data_arguments(parser)
    _train_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="pyra")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="pyra-data-") as workdir:
        data = _load_data(args.data, Path(workdir), args.val_fraction, args.split_seed)
        config = make_run_config(
            data, backbone=args.backbone, backbone_weights=args.weights, img_size=args.img_size, method=args.method,
            schedule=parse_schedule(args.schedule), lora_rank=args.lora_rank, **_regularisation(args),
            train_config=_train_config(args, args.seed), seed=args.seed,
        )
        progress = ProgressLine(not args.json)
        model, result, report = train_run(data, config, args.out, on_progress=progress)
        progress.close()
    geo = geometry(model)
    summary = {
        "run_dir": str(args.out),
        "status": result.status,
        "message": result.message,
        "seconds": result.seconds,
        "steps": result.steps,
        "method": config.method,
        "schedule": list(config.schedule),
        "tokens_per_layer": tokens_per_layer(config.schedule, geo),
        "flops": forward_flops(config.schedule, geo, config.method),
        "flops_ratio": flops_ratio(config.schedule, geo, config.method),
        "elastic": result.elastic,
        "head_start": result.head_start.to_dict() if result.head_start else None,
        "parameters": parameter_report(model).to_dict(),
        "validation": report.to_dict() if report is not None else None,
        "classes": list(config.classes),
    }
    accuracy = f"validation accuracy {report.accuracy:.2%} [{report.low:.2%}, {report.high:.2%}] (n={report.n})" \
        if report is not None else result.message
    emit(summary, f"{result.status}: {args.out} in {result.seconds:.0f}s; {accuracy}", args.json)
    return 0 if result.status == "completed" else 1


# ---------------------------------------------------------------------------------------- eval


def _add_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="re-evaluate a run folder, at its schedule or another one")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", help="the run's data (default: the sample it was trained on)")
    parser.add_argument("--schedule", help="evaluate at this schedule instead of the trained one")
    parser.add_argument("--method", choices=METHODS, help="e.g. tome: training-free merging")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved speed rounds (0: skip speed)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for throughput")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile'd models (compiling takes about 40 s per model on CPU; "
                             "the accuracy is the eager model's)")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from pyra.method.lora import merge_lora
    from pyra.method.patch import set_schedule
    from pyra.run.checkpoint import load_run
    from pyra.run.cpu_layout import column_major_linears

    config = load_config(args.run_dir)
    source = args.data or config.data_source
    if not args.data and not source.startswith("sample:"):
        raise DataError(f"{args.run_dir}: trained on {source!r}; pass it again with --data PATH")
    schedule = parse_schedule(args.schedule) if args.schedule else None
    with tempfile.TemporaryDirectory(prefix="pyra-data-") as workdir:
        data = _load_data(source, Path(workdir), config.val_fraction, config.split_seed, config.max_per_class)
        report, metrics, model = evaluate_run(args.run_dir, data, schedule=schedule, method=args.method)
    geo = geometry(model)
    method = args.method or config.method
    applied = resolve_schedule(schedule, geo) if schedule is not None else list(config.schedule)
    recorded = (metrics.get("validation") or {}).get("accuracy")
    result: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "method": method,
        "schedule": applied,
        "tokens_per_layer": tokens_per_layer(applied, geo),
        "flops": forward_flops(applied, geo, method),
        "flops_ratio": flops_ratio(applied, geo, method),
        "validation": report.to_dict(),
        "off_target": off_target(config, applied, method),
        "recorded_accuracy": recorded,
        "reproduces_recorded": recorded == report.accuracy if schedule is None and args.method is None else None,
    }
    if args.repeats > 0:
        baseline, _ = load_run(args.run_dir)
        set_schedule(model, applied, method=method)
        set_schedule(baseline, 0, method="none")
        models = {"uncompressed": column_major_linears(merge_lora(baseline.to(default_device()))),
                  "compressed": column_major_linears(merge_lora(model))}
        if args.compile:
            models = {name: torch.compile(m, dynamic=False) for name, m in models.items()}
        stats = measure_speed(models, img_size=config.img_size, batch_size=args.batch, repeats=args.repeats,
                              device=default_device())
        result["speed"] = {name: s.to_dict() for name, s in stats.items()}
        result["speed_compiled"] = args.compile
    text = (f"{method} at {applied}: accuracy {report.accuracy:.2%} [{report.low:.2%}, {report.high:.2%}] "
            f"(n={report.n}), macro-F1 {report.macro_f1:.3f}, {result['flops_ratio']:.2f}x fewer FLOPs")
    if result["off_target"]:
        text += "\noff-target: the run was not trained for this schedule, so this accuracy understates what " \
                "a model trained for it would reach"
    if "speed" in result:
        speed = result["speed"]
        text += (f"\nthroughput {speed['compressed']['throughput']['median']:.1f} img/s vs "
                 f"{speed['uncompressed']['throughput']['median']:.1f} uncompressed "
                 f"({speed['compressed']['threads']} threads{', torch.compile' if args.compile else ''})")
    emit(result, text, args.json)
    return 0


def off_target(config: RunConfig, schedule: list[int], method: str) -> bool:
    """True when the run was not trained for `schedule` with `method`: an elastic run covers every
    schedule up to its target, any other run only its own schedule."""
    trained = list(config.schedule)
    if not any(schedule):
        return config.method != "none" and config.train.elastic == "off" and any(trained)
    if method != config.method:
        return True
    if config.train.elastic != "off":
        return any(r > t for r, t in zip(schedule, trained))
    return schedule != trained


# ---------------------------------------------------------------------------------------- compare


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compare", help="train uncompressed, ToMe and PYRA, then sweep compression levels")
    _data_arguments(parser)
    _train_arguments(parser)
    parser.add_argument("--seeds", default="0", help="training seeds, comma separated (e.g. 0,1,2)")
    parser.add_argument("--levels", default="0,0.25,0.5,0.75,1", help="fractions of the schedule to sweep")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="elastic: one model per method for every level; per-level: one model per level "
                             "(the paper's). Default: elastic, or per-level with --no-elastic / --recipe paper")
    parser.add_argument("--bench-repeats", type=int, default=5)
    parser.add_argument("--bench-batch", type=int, default=8)
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs and compare.json/csv")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs in --out that completed with the same settings; train only the others")
    add_executor_arguments(parser)
    parser.set_defaults(run=run_compare_command)


def _numbers(text: str, kind: type, what: str) -> tuple:
    try:
        return tuple(kind(value) for value in text.split(",") if value.strip())
    except ValueError:
        raise ValueError(f"cannot read {what} {text!r}; give comma-separated numbers like 0,1,2") from None


def run_compare_command(args: argparse.Namespace) -> int:
    train_config = _train_config(args, 0)
    protocol = args.protocol or protocol_for(train_config)
    config = CompareConfig(
        backbone=args.backbone, weights=args.weights, img_size=args.img_size, schedule=parse_schedule(args.schedule),
        lora_rank=args.lora_rank, **_regularisation(args), protocol=protocol,
        train=train_config, seeds=_numbers(args.seeds, int, "seeds"),
        levels=_numbers(args.levels, float, "levels"), bench_batch=args.bench_batch, bench_repeats=args.bench_repeats,
    )
    with tempfile.TemporaryDirectory(prefix="pyra-data-") as workdir:
        data = _load_data(args.data, Path(workdir), args.val_fraction, args.split_seed)
        progress = ProgressLine(not args.json)
        result = run_compare(data, config, args.out, on_progress=progress, executor=executor_from(args),
                             resume=args.resume)
        progress.close()
    summary = {"out_dir": str(args.out), "status": result.status, "message": result.message,
               "protocol": result.protocol, "training": result.training,
               "levels": [asdict(level) for level in result.levels], "rows": result.rows,
               "comparisons": {str(k): v for k, v in result.comparisons.items()}}
    lines = [f"{result.status}: {args.out}"]
    for row in result.rows:
        lines.append(f"  {row['schedule_label'][:40]:<40} {row['method_label']:<20} "
                     f"{row['accuracy']:.2%} [{row['accuracy_low']:.2%}, {row['accuracy_high']:.2%}]  "
                     f"{row['throughput']:.1f} img/s")
    if result.levels:
        lines += [f"  {c['sentence']}" for c in result.comparisons[result.levels[-1].index]]
    emit(summary, "\n".join(lines), args.json)
    return 0 if result.status == "completed" else 1


# ---------------------------------------------------------------------------------------- tokens


def _add_tokens(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("tokens", help="draw the merged-token maps of one image, layer by layer")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--schedule", help="another schedule than the trained one")
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_tokens)


def run_tokens(args: argparse.Namespace) -> int:
    try:
        with Image.open(args.image) as opened:
            image = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise DataError(f"{args.image}: not a readable image ({error}); give a PNG or JPEG") from None
    schedule = parse_schedule(args.schedule) if args.schedule else None
    maps = token_maps(args.run_dir, image, schedule=schedule, method=args.method)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    maps.panel.save(args.out)
    result = {"out": str(args.out), "method": maps.method, "schedule": maps.schedule, "tokens": maps.tokens}
    emit(result, f"{args.out}: {maps.method}, tokens per layer {maps.tokens}", args.json)
    return 0


# ---------------------------------------------------------------------------------------- export


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write a run's model as one ONNX file (LoRA folded in, fixed schedule)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--onnx", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--schedule", help="merge at this schedule instead of the trained one (0: no merging)")
    parser.add_argument("--method", choices=METHODS, help="another merging method than the run's")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=1, help="the fixed batch size of the graph (default 1)")
    size.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from pyra.run.onnx_export import export_run

    if args.batch < 1:
        raise ValueError(f"--batch must be a whole number >= 1, got {args.batch}")
    if args.onnx.suffix != ".onnx":
        raise ValueError(f"--onnx {args.onnx}: name the file with the .onnx extension")
    schedule = parse_schedule(args.schedule) if args.schedule else None
    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    info = export_run(args.run_dir, args.onnx, schedule=schedule, method=args.method, batch=args.batch,
                      dynamic_batch=args.dynamic_batch)
    batch = "any batch" if info.batch is None else f"batch {info.batch}"
    emit(info.to_dict(), f"{info.path}: {info.method} at {info.schedule}, {batch}, {info.img_size} px, "
                         f"{len(info.classes)} classes, {info.bytes / 2**20:.1f} MB. {info.check.describe()} "
                         f"{info.speed.describe()}",
         args.json)
    return 0


COMMANDS = (_add_samples, _add_train, _add_eval, _add_compare, _add_tokens, _add_export)
