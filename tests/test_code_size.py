"""Code size: no function over 100 lines and no source file over 700 lines, bar the listed exceptions."""
from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("fwedge", "passes", "calibration", "targets", "device_farm")
MAX_FUNCTION_LINES = 100  # def line to last line, decorators not counted
MAX_FILE_LINES = 700

# A module docstring with "long: <reason>" explains why that file, and the functions in it, may
# be longer (the redesign issue's rule). Ten characters at least, so "long:" alone is no reason.
LONG_REASON = re.compile(r"\blong:\s*(\S.{9,})", re.DOTALL)

# What was too long when this test was written: each entry is to be split and removed, never
# added to. A file is named by its path, a function by "path::qualified.name".
ALLOWED: dict[str, str] = {}


def _functions(tree: ast.Module):
    """(qualified name, lines) of every function and method, nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _too_long() -> dict[str, str]:
    """key (as in ALLOWED) -> what is too long, for every source file without a "long:" reason."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, filename=relative)
            if LONG_REASON.search(ast.get_docstring(tree) or ""):
                continue
            lines = len(text.splitlines())
            if lines > MAX_FILE_LINES:
                found[relative] = f"file of {lines} lines (limit {MAX_FILE_LINES})"
            for name, length in _functions(tree):
                if length > MAX_FUNCTION_LINES:
                    found[f"{relative}::{name}"] = f"function of {length} lines (limit {MAX_FUNCTION_LINES})"
    return found


def test_no_new_long_functions_or_files():
    new = {key: what for key, what in _too_long().items() if key not in ALLOWED}
    listed = "\n".join(f"  {key}: {what}" for key, what in sorted(new.items()))
    assert not new, (
        f"too long:\n{listed}\nsplit them into named helpers or modules, or give the file's module "
        "docstring a 'long: <reason>'"
    )


def test_allowed_entries_are_still_needed():
    """An exception that is no longer too long should leave ALLOWED (a warning, not a failure,
    so that splitting someone's file never breaks an unrelated branch)."""
    current = _too_long()
    stale = sorted(key for key in ALLOWED if key not in current)
    if stale:
        warnings.warn(f"remove from ALLOWED in tests/test_code_size.py, no longer too long: {stale}")


def test_function_lengths_are_counted_from_def_to_last_line():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n        return g\n")
    assert _functions(tree) == [("A.f", 4), ("A.f.g", 2)]
    assert LONG_REASON.search("Tables.\n\nlong: generated op tables, one per opset")
    assert not LONG_REASON.search("Tables. long:")
