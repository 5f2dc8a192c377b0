"""Render docs/RESULTS.md (and its charts) from the JSON files the result benchmarks write.

    python benchmarks/results_report.py
    python benchmarks/results_report.py --quick --out /tmp/q --no-png   # the --quick runs' files in /tmp/q

Inputs in <out>/results/: backbone_quality.json (benchmarks/backbone_quality.py),
elastic_matrix*.json (benchmarks/elastic_matrix.py), recipe_search.json (benchmarks/recipe_search.py),
quick_demo.json (benchmarks/quick_demo.py), quick_demo_recipe*.json (benchmarks/quick_demo_recipe.py),
feature_gain.json (benchmarks/feature_gain.py),
accuracy_matrix*.json (benchmarks/accuracy_matrix.py) and <dataset>_<schedule>.json
(benchmarks/demo_comparison.py); throughput for the charts from <out>/perf/engine_speed.json
(benchmarks/engine_speed.py) when it measured the same backbone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import quick_demo_recipe as recipe_runs
from benchmarks.accuracy_report import accuracy_section, load_matrices
from benchmarks.charts import write_chart
from benchmarks.elastic_report import elastic_section, load_elastic
from pyra.report.tables import markdown_table
from pyra.run.head_start import PROBE_C

REPO = Path(__file__).resolve().parents[1]


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def quality_section(report: dict) -> list[str]:
    rows = [[r["backbone"], f"{pct(r['accuracy'])} [{pct(r['accuracy_low'])}, {pct(r['accuracy_high'])}]",
             str(r["n_val"]), " / ".join(pct(a) for a in r["val_accuracy_per_epoch"]), f"{r['train_seconds']:.0f}"]
            for r in report["results"]]
    return [
        "## The default backbone is really pretrained", "",
        f"    {report['command']}", "",
        f"Machine: {report['machine']}. Settings: {report['settings']}.", "",
        markdown_table(["backbone", "val accuracy % [95% Wilson]", "val images", "after each epoch %", "train s"],
                       rows),
        "",
        "The random-init run uses the same recipe, which is tuned for pretrained features; it shows how much "
        "the shipped weights carry, not the best a random-init ViT could do with a longer schedule.", "",
    ]


def recipe_section(report: dict) -> list[str]:
    """benchmarks/recipe_search.py: validation accuracy per learning rate, and per head-start C."""
    cells = report["cells"]
    lr_rows = [[c["dataset"], str(c["seed"]), "LoRA uncompressed" if c["method"] == "none" else "ToMe + LoRA at high",
                f"{c['lr']:g}", pct(c["accuracy"]), pct(c.get("probe_accuracy")), str(c["n"])]
               for c in cells if c.get("part", "lr") == "lr"]
    c_rows = [[c["dataset"], str(c["seed"]), "no head start" if c["head_start_c"] is None else f"{c['head_start_c']:g}",
               pct(c["accuracy"]), pct(c.get("probe_accuracy")), str(c["n"])]
              for c in cells if c.get("part") == "head start"]
    lines = ["## How the default recipe was chosen", "", f"    {report['command']}", "",
             f"Tuning splits (seeds 100-102) that no other table uses; {report['threads']} torch thread(s) on "
             f"{report['machine']['cpu']}. Everything else is the default recipe (3 epochs, batch 16, 10% warm-up, "
             "cosine, no dropout); ToMe + LoRA is trained at \"high\" only here, so the recipe is judged "
             "without elastic training.", "",
             "Learning rate (LoRA + head), with the head start; probe = scikit-learn's logistic regression (C = 1) on "
             "the frozen features at the same level:", "",
             markdown_table(["dataset", "seed", "model", "lr", "val accuracy %", "probe %", "val images"], lr_rows),
             ""]
    if c_rows:
        lines += [f"Head start: the logistic regression's C (inverse L2 strength), ToMe + LoRA at \"high\", "
                  f"lr {next(c['lr'] for c in cells if c.get('part') == 'head start'):g}; probe = the same fit "
                  "used as the classifier on its own:", "",
                  markdown_table(["dataset", "seed", "head start C", "val accuracy %", "probe %", "val images"],
                                 c_rows), ""]
    return lines


def quick_demo_section(report: dict) -> list[str]:
    """benchmarks/quick_demo.py: the app's Quick demo in Chromium, its time and what the Compare tab showed."""
    rows = []
    for index, level in enumerate(report["levels"]):
        probe = report["probe"][index]
        for method, row in level.items():
            above = report["above_probe"][index].get(method)
            rows.append([str(index), method, f"{row['accuracy']:.1f} [{row['low']:.1f}, {row['high']:.1f}]",
                         row["trained_for_level"], "" if above is None else f"{above:+.1f}"])
        rows.append([str(index), "probe (frozen features)",
                     f"{probe['accuracy']:.1f} [{probe['low']:.1f}, {probe['high']:.1f}]", "fitted at this level", ""])
    verdict = "every check held" if not report["failures"] else "failed: " + "; ".join(report["failures"])
    return ["## The Quick demo, as a visitor runs it", "", f"    {report['command']}", "",
            f"`python app.py` on 127.0.0.1 with {report['threads']} torch threads on {report['machine']['cpu']} "
            f"({report['machine']['cores']} cores, otherwise idle), one press of **Quick demo** in headless Chromium: "
            f"**{report['seconds']:.0f} s** from the click to the Done line, validated on "
            f"{report['validation_images']} images; {verdict}. What the Compare tab showed at each slider position "
            "(accuracy % with its 95% Wilson interval), and the frozen-feature probe fitted on the demo's own "
            "training images at each level:", "",
            markdown_table(["level", "method", "accuracy % [95% CI]", "trained for this level",
                            "minus the probe (points)"], rows), "",
            "One split of 300 validation images: a point is 3 images, and the Wilson intervals are about "
            "+-5 points, so a difference to the probe of a few points is within noise. The pooled comparison "
            "with the probe over datasets and seeds is in the elastic matrix below.", ""]


RECIPE_MODELS = (("none", "LoRA"), ("tome", "ToMe + LoRA"), ("pyra", "PYRA + LoRA"))


def quick_demo_recipe_section(reports: list[dict]) -> list[str]:
    """benchmarks/quick_demo_recipe.py, every run of it: how the Quick demo's training settings were chosen."""
    cells = recipe_runs.combined(reports)
    summary = recipe_runs.summarise(cells)
    chosen = recipe_runs.choose(summary, recipe_runs.DEMO_TRAINING_IMAGES)
    margin_columns = [(m, f) for m, _ in RECIPE_MODELS for f in recipe_runs.trained_levels(m)]
    rows = []
    for key, s in summary.items():
        margins = []
        for m, f in margin_columns:
            name = f"{m}@{f}"
            interval = s["margin_interval"][name]
            margins.append(f"{s['margin_over_probe'][name]:+.1f}"
                           + ("" if interval is None else f" [{interval[0]:+.1f}, {interval[1]:+.1f}]"))
        fits = "yes" if recipe_runs.fits(s) else "no: longer"
        bold = "**" if key == chosen else ""
        rows.append([f"{bold}{setting_label(s)}{bold}", str(s["steps"]), fits, *margins, f"{s['mean_accuracy']:.1f}"])
    headers = ["training images, epochs x batch, lr, C", "steps", "fits 3 min",
               *[f"{label} at {f:g}" for m, label in RECIPE_MODELS for f in recipe_runs.trained_levels(m)],
               "mean accuracy %"]
    per_split = [[str(cell["split_seed"]), setting_label(cell), *[f"{cell[m][str(f)]:.1f}" for m, f in margin_columns]]
                 for cell in cells]
    probes = {(cell["split_seed"], cell["n_train"]): cell["probe"] for cell in cells}
    for (split, n_train), probe in sorted(probes.items()):
        per_split.append([str(split), f"{n_train}, frozen-feature probe (C = 1)",
                          *[f"{probe[str(f)]:.1f}" for _, f in margin_columns]])
    s = summary[chosen]
    return ["### How the Quick demo's training settings were chosen", "",
            *[f"    {report['command']}" for report in reports], "",
            "The Quick demo trains on 100 images for a few epochs, far fewer steps than the runs the default recipe "
            "was chosen on, so its batch size, learning rate and head-start C were chosen on its own data, split with "
            f"seeds the demo does not use (it reports split seed 0; here {len({c['split_seed'] for c in cells})} splits, "
            "300 validation images each). The first column counts the training images: 100 is the demo's 10 per "
            "class; a run with more caps the sample higher and holds out a smaller share, so it keeps 300 validation "
            "images and shows the models more different images for the same work. Each cell is a model's accuracy "
            "minus the frozen-feature probe's on the same split at a level the model was trained for, in points: the "
            "mean over the splits with its 95% t-interval. A setting fits the demo's 3 minutes "
            f"when its models see at most {recipe_runs.DEMO_TRAINING_IMAGES} training images (2 epochs of 100; a batch "
            "of 8 costs what the server's two passes of 8 for a batch of 16 cost). The choice, among those that fit: "
            "the highest mean accuracy among the settings never below the probe, else the smallest shortfall. Chosen: "
            f"**{s['n_train']} training images, {s['epochs']} epochs of batch {s['batch_size']} ({s['steps']} steps), "
            f"lr {s['lr']:g}, C {s['head_start_c']:g}**.", "",
            markdown_table(headers, rows), "",
            "Per split, accuracy % of each model at the levels it was trained for (same columns):", "",
            markdown_table(["split seed", "setting", *headers[3:-1]], per_split), ""]


def setting_label(setting: dict) -> str:
    """'100, 2 x 8, lr 0.001, C 0.2': training images, epochs x batch, lr and the head start's C of a cell or setting."""
    return (f"{setting['n_train']}, {setting['epochs']} x {setting['batch_size']}, lr {setting['lr']:g}, "
            f"C {setting['head_start_c']:g}")


FEATURE_VARIANTS = (("fine-tuned", "fine-tuned"), ("re-probed", f"re-probed (head refitted, C = {PROBE_C:g})"),
                    ("head kept", "head kept (only LoRA / PYRA trained)"))


def feature_gain_section(report: dict) -> list[str]:
    """benchmarks/feature_gain.py: fine-tuned, re-probed and head-kept models against the frozen-feature probe."""
    rows = []
    for key, by_variant in report["summary"].items():
        method, level = key.split("@")
        label = dict(RECIPE_MODELS)[method]
        cells = []
        for variant, _ in FEATURE_VARIANTS:
            d = by_variant[variant]
            cells.append(f"{d['mean']:+.1f}" + ("" if d["interval"] is None else
                                                 f" [{d['interval'][0]:+.1f}, {d['interval'][1]:+.1f}]"))
        rows.append([f"{label} at {float(level):g}", *cells])
    train = report["train"]
    return ["### Does fine-tuning give the head better features than the frozen backbone?", "",
            f"    {report['command']}", "",
            f"The Quick demo's settings ({train['epochs']} epochs of batch {train['batch_size']}, lr {train['lr']:g}, "
            f"head-start C {train['head_start_c']:g}) on its {len(report['probe'])} tuning splits, {report['threads']} "
            f"threads on {report['machine']['cpu']}, {report['seconds'] / 60:.0f} minutes. Each cell is a model minus "
            "the frozen-feature probe at a level it was trained for, in points (mean over the splits, 95% "
            "t-interval). *Re-probed*: the fine-tuned model's head refitted by the probe's own logistic regression "
            "on the fine-tuned features of the training images, which measures the features alone. *Head kept*: "
            "trained with the head-start head frozen.", "",
            markdown_table(["model at level", *[label for _, label in FEATURE_VARIANTS]], rows), "",
            feature_gain_verdict(report["summary"]), ""]


def feature_gain_verdict(summary: dict) -> str:
    """One sentence on the uncompressed level: is any re-probed model above the probe by an interval that excludes 0?"""
    at_zero = {key: by_variant["re-probed"] for key, by_variant in summary.items() if key.endswith("@0.0")}
    above = [dict(RECIPE_MODELS)[key.split("@")[0]] for key, d in at_zero.items()
             if d["interval"] is not None and d["interval"][0] > 0]
    if above:
        text = (f"Uncompressed, re-probing puts {', '.join(above)} above the probe (interval above 0): fine-tuning "
                "gave the linear head better features there.")
    else:
        text = ("Uncompressed, no re-probed model is above the probe by an interval that excludes 0: fine-tuning on "
                "these images did not give a linear head measurably better features than the frozen backbone's, so "
                "without merging a fine-tuned model can at best match the probe here.")
    at_target = [by_variant["fine-tuned"] for key, by_variant in summary.items() if key.endswith("@1.0")]
    if at_target and all(d["interval"] is not None and d["interval"][0] > 0 for d in at_target):
        text += (" At the target, every fine-tuned merging model is above the probe (intervals above 0): there "
                 "fine-tuning wins back accuracy that merging costs the frozen features.")
    return text


def comparison_section(report: dict) -> list[str]:
    result, settings, data = report["result"], report["settings"], report["data"]
    seeds = settings["seeds"]
    lines = [
        f"## Comparison on `{data['source']}`, schedule `{settings['schedule']}`", "",
        f"    {report['command']}", "",
        f"{data['train']} training / {data['val']} validation images, {len(data['classes'])} classes; "
        f"backbone `{settings['backbone']}` at {settings['img_size']} px, LoRA rank {settings['lora_rank']}, "
        f"{settings['train']['epochs']} epochs, batch {settings['train']['batch_size']}, lr {settings['train']['lr']:g}, "
        f"PYRA lr {settings['train']['pyra_lr']:g}, seeds {seeds}; {report['minutes']} minutes in all on "
        f"{report['machine']['cpu']} ({report['machine']['cores']} cores).", "",
        ("Accuracy: mean over seeds with a 95% Student-t interval across seeds"
         if len(seeds) > 1 else "Accuracy with a 95% Wilson interval (one seed)")
        + "; each seed's accuracy in the next column. Throughput: median images/s at batch 8 "
        "(measured on the first seed's models, interleaved).", "",
    ]
    target_only = "protocol" not in result  # written before elastic training: trained at the target level only
    if target_only:
        lines += ["This comparison predates elastic training: ToMe + LoRA and PYRA + LoRA were trained at the target "
                  "level only, so their rows at the other levels are marked *off-target* (evaluated at a level "
                  "their model was not trained for).", ""]
    else:
        lines += [f"Training: {result['training']}.", ""]
    last = result["levels"][-1]["index"] if result["levels"] else None
    rows = []
    for level in result["levels"]:
        for row in [r for r in result["rows"] if r["level"] == level["index"]]:
            if level["index"] > 0 and row["method"] == "uncompressed":
                continue
            off_target = target_only and row["method"] in ("tome", "pyra") and level["index"] != last
            rows.append([
                level["label"] if row["method"] != "uncompressed" else "uncompressed",
                row["method_label"] + (" (off-target)" if off_target else ""),
                f"{pct(row['accuracy'])} [{pct(row['accuracy_low'])}, {pct(row['accuracy_high'])}]",
                " ".join(pct(float(a)) for a in row["seed_accuracies"].split()),
                f"{row['throughput']:.1f}", f"{row['flops_ratio']:.2f}x",
            ])
    lines.append(markdown_table(["level", "method", "accuracy %", "per seed %", "img/s", "FLOPs ratio"], rows))
    target = str(result["levels"][-1]["index"])
    lines += ["", "Paired differences at the target level (first seed: bootstrap over validation images and "
              "exact McNemar; all seeds: mean difference with a t-interval):", ""]
    for comparison in result["comparisons"][target]:
        line = f"- {comparison['sentence']}"
        across = comparison.get("seeds")
        if across:
            per_seed = ", ".join(f"{100 * v:+.1f}" for v in across["values"])
            line += (f" Across {across['n']} seeds: {100 * across['mean']:+.1f} points "
                     f"(95% CI {100 * across['low']:+.1f} to {100 * across['high']:+.1f}; per seed {per_seed}).")
        lines.append(line)
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="reads <out>/results and <out>/perf; writes <out>/RESULTS.md, <out>/charts (default docs/)")
    parser.add_argument("--no-png", action="store_true", help="write the HTML charts only (no Chromium needed)")
    parser.add_argument("--quick", action="store_true", help="render the files the --quick runs wrote")
    args = parser.parse_args(argv)
    results = args.out / "results"
    lines = ["# Results", "",
             "Every number here comes from a script in `benchmarks/`, with its command above its table. "
             "Accuracy on a few hundred validation images is noisy: read the intervals, not the point estimates. "
             "The default recipe's learning rate and head-start regularisation were chosen on tuning splits "
             "(seeds 100-102) that no other table uses; the older tables further down (the backbone check and the "
             "per-level matrix with its PYRA learning-rate sweep) used lr 5e-3, chosen on their own split "
             "(see the caveats at the end).", ""]
    suffix = "_quick" if args.quick else ""
    quality = results / f"backbone_quality{suffix}.json"
    if quality.is_file():
        lines += quality_section(json.loads(quality.read_text()))
    recipe_path = results / f"recipe_search{suffix}.json"
    if recipe_path.is_file():
        lines += recipe_section(json.loads(recipe_path.read_text()))
    demo_path = results / "quick_demo.json"
    if demo_path.is_file() and not args.quick:
        lines += quick_demo_section(json.loads(demo_path.read_text()))
        demo_recipes = recipe_runs.load_reports(results)
        if demo_recipes:
            lines += quick_demo_recipe_section(demo_recipes)
        feature_gain = results / "feature_gain.json"
        if feature_gain.is_file():
            lines += feature_gain_section(json.loads(feature_gain.read_text()))
    elastic = load_elastic(results, quick=args.quick)
    if elastic:
        lines += elastic_section(elastic)
    matrices = load_matrices(results, quick=args.quick)
    if matrices:
        speed_path = args.out / "perf" / "engine_speed.json"
        speed = json.loads(speed_path.read_text()) if speed_path.is_file() else None
        lines += accuracy_section(matrices, speed, lambda fig, stem: write_chart(fig, stem, png=not args.no_png),
                                  args.out / "charts")
    for path in sorted(results.glob("*_*.json")):
        comparison = not path.stem.startswith(("backbone_quality", "accuracy_matrix", "elastic_matrix",
                                               "recipe_search", "quick_demo", "feature_gain"))
        if comparison and path.stem.endswith("_quick") == args.quick:
            lines += comparison_section(json.loads(path.read_text()))
    caveats = REPO / "benchmarks" / "results_caveats.md"
    if caveats.is_file():
        lines += [caveats.read_text().strip(), ""]
    (args.out / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
