"""The layout the code promises: the method imports nothing above it, the engine never imports Gradio,
the app holds no tensor code, no file is too long, and every third-party import is declared."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
IMPORT_TO_DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image",
                          "gradio_client": "gradio_client", "huggingface_hub": "huggingface_hub"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (absolute names; relative imports are not used)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_the_method_imports_nothing_else_of_pyra():
    for path in python_files("pyra/method"):
        outside = {m for m in imported_modules(path) if m.split(".")[0] == "pyra" and not m.startswith("pyra.method")}
        assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)}"


def test_the_engine_never_imports_gradio():
    for path in python_files("pyra"):
        ui = {m for m in imported_modules(path) if m.split(".")[0] in ("gradio", "gradio_client", "pyra_app")}
        assert not ui, f"{path.relative_to(REPO)} imports {sorted(ui)}"


def test_the_app_holds_no_tensor_code():
    for path in python_files("pyra_app"):
        tensors = {m for m in imported_modules(path) if m.split(".")[0] in ("torch", "torchvision", "timm")}
        assert not tensors, f"{path.relative_to(REPO)} imports {sorted(tensors)}"


def test_pyra_is_grouped_into_packages_with_few_loose_modules():
    loose = sorted(p.name for p in (REPO / "pyra").glob("*.py"))
    packages = sorted(p.parent.name for p in (REPO / "pyra").glob("*/__init__.py"))
    assert len(loose) <= 4, loose
    assert len(packages) >= 4, packages


@pytest.mark.parametrize("folder", ["pyra", "pyra_app"])
def test_no_file_is_longer_than_the_limit(folder):
    for path in python_files(folder):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines"


def declared(*files: str) -> set[str]:
    """Distribution names in requirement files (following -r), lower case, '-' for '_'."""
    names = set()
    for name in files:
        for line in (REPO / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("-r "):
                names |= declared(line[3:].strip())
            elif line and not line.startswith("-"):
                names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def third_party(paths: list[Path]) -> set[str]:
    ours = {"pyra", "pyra_app", "benchmarks", "app", "conftest"} | {p.stem for p in (REPO / "tests").glob("*.py")}
    tops = {m.split(".")[0] for path in paths for m in imported_modules(path)}
    return {t for t in tops if t not in ours and t not in sys.stdlib_module_names}


@pytest.mark.parametrize("folders, requirements", [
    (("pyra", "pyra_app"), ("requirements.txt", "requirements-ray.txt")),  # Ray: optional, imported when used
    (("pyra", "pyra_app", "benchmarks", "tests"), ("requirements-dev.txt",)),
])
def test_every_third_party_import_is_declared(folders, requirements):
    paths = [path for folder in folders for path in python_files(folder)] + [REPO / "app.py"]
    wanted = {IMPORT_TO_DISTRIBUTION.get(name, name).lower().replace("_", "-") for name in third_party(paths)}
    missing = wanted - declared(*requirements)
    assert not missing, f"imported but not in {requirements}: {sorted(missing)}"
