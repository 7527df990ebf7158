"""The `model.module` string: its form, a relative file resolved against the spec, and a check that the
named class exists, all without importing the module (no torch: `gencv validate --no-data` stays light)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gencv.errors import SpecError, did_you_mean

__all__ = ["check_module_source", "is_file_ref", "module_ref_problem", "module_relative_to"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_file_ref(ref: str) -> bool:
    """Whether a `model.module` string names a file ("path/to/nets.py:Net") rather than an importable module."""
    where = ref.rpartition(":")[0]
    return where.endswith(".py") or "/" in where or "\\" in where


def module_ref_problem(ref: str) -> str | None:
    where, sep, name = ref.rpartition(":")
    fix = "use package.module:Name or path/to/file.py:Name"
    if not sep or not where or not name:
        return f"expected MODULE:NAME; {fix}"
    if not _DOTTED.fullmatch(name):
        return f"{name!r} is not a Python name; {fix}"
    if is_file_ref(ref):
        return None if where.endswith(".py") else f"{where!r} is not a .py file; {fix}"
    return None if _DOTTED.fullmatch(where) else f"{where!r} is not an importable module path; {fix}"


def module_relative_to(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A relative file in model.module resolved against the spec's folder, so a run from elsewhere finds it."""
    model = raw.get("model")
    ref = model.get("module") if isinstance(model, dict) else None
    if not isinstance(ref, str) or not is_file_ref(ref) or module_ref_problem(ref):
        return raw
    where, _, name = ref.rpartition(":")
    path = Path(where).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    return {**raw, "model": {**model, "module": f"{path}:{name}"}}


def check_module_source(ref: str, field: str = "model.module") -> None:
    """Check that `ref`'s file exists and defines the name at top level, without importing it (no torch)."""
    import ast
    import importlib.util

    where, _, name = ref.rpartition(":")
    if is_file_ref(ref):
        file: Path | None = Path(where)
        if not file.is_file():
            raise SpecError(f"{field}: got {ref!r}: the file {where} does not exist; give a path to a .py file, "
                            "relative to the spec file or absolute, e.g. nets/resmlp.py:ResMLP")
    else:
        parts = where.split(".")
        try:
            found = importlib.util.find_spec(parts[0])  # locates the top package; runs nothing of it
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise SpecError(f"{field}: got {ref!r}: module {parts[0]!r} not found; install its package, add its "
                            "folder to PYTHONPATH, or give a file: path/to/nets.py:Net")
        file = Path(found.origin) if found.origin and found.origin.endswith(".py") else None
        dirs = list(found.submodule_search_locations or [])
        for part in parts[1:]:
            file = next((c for d in dirs for c in (Path(d) / f"{part}.py", Path(d) / part / "__init__.py")
                         if c.is_file()), None)
            if file is None:
                raise SpecError(f"{field}: got {ref!r}: module {where!r} not found under {parts[0]}; check the "
                                "dotted path")
            dirs = [str(file.parent)] if file.name == "__init__.py" else []
        if file is None:  # a compiled or namespace module: nothing to read without importing it
            return
    top = name.split(".")[0]
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise SpecError(f"{field}: got {ref!r}: cannot parse {file}: {exc}; fix the file") from None
    defs: set[str] = set()  # classes and functions: what the message offers
    other: set[str] = set()  # names bound by imports and assignments: accepted, not offered
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defs.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            other.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            other.update(t.id for t in targets if isinstance(t, ast.Name))
    if top not in defs | other and "*" not in other:  # a star import: only importing would tell
        public = sorted(n for n in defs if not n.startswith("_"))
        raise SpecError(f"{field}: got {ref!r}: {file} defines no {top!r}.{did_you_mean(top, public)} "
                        f"Name a class or factory it defines ({', '.join(public) or 'none found'})")
