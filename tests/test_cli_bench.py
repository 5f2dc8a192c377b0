"""`python -m pyra bench` (JSON output with the documented fields; bad input gives one line, exit 2)
and `pyra.run.speed_bench.bench_sweep`, which benchmarks/engine_speed.py renders into docs/PERFORMANCE.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.engine_speed import performance_markdown
from pyra.cli.main import main
from pyra.run.speed_bench import bench_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "vit_tiny_patch16_224", "--img-size", "32", "--batch", "2", "--threads", "1", "--repeats", "2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyra", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_bench_json_has_documented_fields():
    done = _run("bench", *TINY, "--schedule", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is only JSON
    for key in ("machine", "threads", "torch", "timm", "backbone", "img_size", "tokens", "schedule",
                "tokens_per_layer", "flops", "flops_ratio", "methods", "overhead_pct"):
        assert key in result, key
    assert result["threads"] == 1 and result["machine"]["cores"] >= 1
    assert result["tokens"] == 5 and result["tokens_per_layer"][:3] == [5, 3, 2]  # 2x2 patches + class token
    assert result["schedule"][:2] == [2, 1]
    assert set(result["methods"]) == {"uncompressed", "patched_r0", "tome", "pyra"}
    assert result["flops_ratio"]["tome"] > 1 and result["flops_ratio"]["pyra"] > 1
    assert result["flops"]["patched_r0"] == result["flops"]["uncompressed"]
    for method in result["methods"].values():
        for measure in ("latency_ms", "throughput"):
            assert {"median", "p25", "p75"} <= set(method[measure])
        assert {"speedup_throughput", "speedup_latency", "speedup_over_flops_ratio"} <= set(method)


def test_bad_schedule_is_one_line_exit_2():
    done = _run("bench", *TINY, "--schedule", "lots", "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot read schedule 'lots'" in done.stderr


def test_schedule_of_wrong_length_is_reported_in_process(capsys):
    assert main(["bench", *TINY, "--schedule", "1,2,3"]) == 2
    err = capsys.readouterr().err
    assert "schedule has 3 entries, the model has 12 layers" in err and "Traceback" not in err


def test_sweep_measures_every_level_against_one_uncompressed_pair():
    result = bench_sweep("vit_tiny_patch16_224", 32, levels=("low", 2.5), batch_size=2, repeats=1, warmup=0)
    assert result["tokens"] == 5 and result["threads"] == 1
    assert [level["label"] for level in result["levels"]] == ["low", "2.5x"]
    assert result["patched_r0"]["speedup_over_flops_ratio"] > 0 and "overhead_pct" in result["patched_r0"]
    for level in result["levels"]:
        assert level["flops"]["tome"] < result["flops_uncompressed"]
        assert level["flops_ratio"]["tome"] == result["flops_uncompressed"] / level["flops"]["tome"]
        assert set(level["methods"]) == {"tome", "pyra"} and "pyra_vs_tome" in level["overhead_pct"]
    report = {"generated": "now", "machine": {"cpu": "cpu", "cores": 2, "cores_available": 2, "platform": "p",
                                              "python": "3"},
              "torch": "t", "timm": "t", "settings": {"batch_size": 2, "repeats": 1, "warmup": 0, "levels": ["low", 2.5]},
              "results": [{**result, "command": "cmd"}], "skipped": []}
    text = performance_markdown(report, "python benchmarks/engine_speed.py", png=False)
    assert "| vit_tiny_patch16_224 | 32 | 5 | 1 | 2.5x |" in text and "charts/speed_vs_flops.html" in text
    assert "charts/speed_vs_flops.png" not in text and "Not measured yet" in text
