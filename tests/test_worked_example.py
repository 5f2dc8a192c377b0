"""The worked example shipped in assets/example/: small, loadable, and its models still give the accuracies
benchmarks/worked_example.py recorded when it trained them."""
from __future__ import annotations

import pytest

from pyra.data.datasets import load_dataset
from pyra.report.methods import MERGE_METHODS
from pyra.run.checkpoint import ADAPTER_FILE, load_run
from pyra.run.metrics import evaluate
from pyra.run.one_run import model_dataset
from pyra_app import example
from pyra_app.tab_train import QUICK_DEMO_DATA

MAX_BYTES = 8 << 20  # "a few MB at most"


def test_the_example_is_shipped_small_and_adapters_only():
    record = example.record()
    files = [path for path in example.EXAMPLE_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= MAX_BYTES
    assert not [path for path in files if path.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    result = example.shipped_example()
    assert result is not None and result.status == "completed"
    assert {key.partition("@")[0] for key in result.run_dirs} == {"uncompressed", "tome", "pyra"}
    assert all((run / ADAPTER_FILE).is_file() for run in result.run_dirs.values())
    assert record["data"]["val"] >= 300 and len(result.levels) == 3
    assert {f"{row['method']}@{row['level']}" for row in result.rows} == set(record["accuracy"])


@pytest.mark.slow
def test_the_shipped_models_give_the_recorded_accuracies(tmp_path):
    """Every model, at every level it serves, re-evaluated on the Quick demo's validation split."""
    result, record = example.shipped_example(), example.record()
    data = load_dataset(f"sample:{QUICK_DEMO_DATA['sample']}", tmp_path / "data",
                        val_fraction=QUICK_DEMO_DATA["val_fraction"], max_per_class=QUICK_DEMO_DATA["max_per_class"])
    assert len(data.val) == record["data"]["val"]
    models = {path: load_run(path)[0] for path in result.run_dirs.values()}
    for row in result.rows:
        level = result.levels[row["level"]]
        model = models[result.run_for(row["method"], row["level"])]
        merge = MERGE_METHODS[row["method"]]
        schedule = list(level.schedule) if merge != "none" else [0] * len(level.schedule)
        report, _ = evaluate(model, model_dataset(model, data.val), data.classes, schedule=schedule,
                             method=merge if any(schedule) else "none")
        recorded = record["accuracy"][f"{row['method']}@{row['level']}"]
        assert abs(report.accuracy - recorded) <= 1.5 / len(data.val), (row["method"], row["level"])
