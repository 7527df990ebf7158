"""The package's architecture, checked: layers, no import circles, module sizes, a light CLI start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gencv"

#: The flow, bottom to top: a module may import its own layer or lower ones, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("gencv.errors", "gencv.seeds", "gencv.checksums", "gencv.metrics", "gencv.measures.config", "gencv.datasets", "gencv.experiments",
     "gencv.modref"),
    ("gencv.spec", "gencv.spec_transfer"),
    ("gencv.data", "gencv.tables", "gencv.arrays"),
    ("gencv.splits",),
    ("gencv.models", "gencv.augment"),
    ("gencv.engines",),
    ("gencv.measures",),
    ("gencv.pruning",),
    ("gencv.tracking",),
    ("gencv.cv",),
    ("gencv.stats", "gencv.report"),
    ("gencv.resume",),
    ("gencv.runner", "gencv.posthoc"),
    ("gencv.tuning",),
    ("gencv.studies",),
    ("gencv.cli",),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:  # the longest matching prefix decides (gencv.measures.config before gencv.measures)
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise AssertionError(f"{module} has no layer in tests/test_layout.py LAYERS; add it where it belongs")
    return rank


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported gencv module, at module level?) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    in_type_checking = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                        for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in in_type_checking:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("gencv.") and _resolves(name):
                out.append((name, id(node) in top))
    return out


def _resolves(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "gencv"])
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = _layer(module)
    higher = sorted({name for name, _ in _imports(MODULES[module]) if _layer(name) > own})
    assert not higher, f"{module} (layer {own}) imports higher layers: {higher}"


def test_no_import_circles() -> None:
    graph = {m: {n for n, top in _imports(p) if top and n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if n.startswith(m + "."):  # a package importing its own submodules in __init__ is not a circle
                continue
            if state.get(n) == 1 and not m.startswith(n + "."):
                raise AssertionError("import circle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", list(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= 600, f"{module} has {lines} lines; split it (one module, one job)"


LIGHT = ["torch", "mlflow", "optuna", "matplotlib", "skorch"]


@pytest.mark.parametrize("argv", [["--help"], ["datasets"], ["validate", "--no-data", "experiments/quickstart.yaml"],
                                  ["validate", "--no-data", "experiments/custom_resmlp.yaml"],
                                  ["run", "--help"], ["tune", "--help"]])
def test_light_commands_import_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from gencv.cli import app\n"
        f"res = CliRunner().invoke(app, {argv!r})\n"
        "assert res.exit_code == 0, res.output\n"
        f"print(sorted(m for m in {LIGHT!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"gencv {' '.join(argv)} imported {proc.stdout.strip()}"


def test_public_api_resolves_lazily() -> None:
    code = (
        "import sys, gencv\n"
        "assert 'torch' not in sys.modules\n"
        "missing = [n for n in gencv.__all__ if getattr(gencv, n, None) is None]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
