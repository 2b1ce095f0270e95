"""No function or method over 60 lines in the four runtime packages (issue 27 item 4).

A long function hides its seams: a reader cannot see what it does in one screen, and a test cannot reach its parts.
The length is the `def`'s span (`end_lineno - lineno + 1`, decorators excluded, docstring included). ALLOWED lists
the offenders still being split, each with its owner; an entry that is fixed (or grows a new sibling) fails the test
so the list only shrinks.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("polyaudio_rl", "actors", "rewards", "eval")
LIMIT = 60

# "path::qualified name" -> owner. Only shrinks.
ALLOWED = {
}


def _functions(tree: ast.AST, prefix: str = ""):
    """Yield (qualified name, node) for every function, method and nested function in `tree`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            yield name, node
            yield from _functions(node, f"{name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> dict[str, int]:
    """Map "path::qualified name" to its line count for every function in PACKAGES longer than `limit` lines."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for name, node in _functions(tree):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out[f"{path.relative_to(root).as_posix()}::{name}"] = n
    return out


def test_no_function_over_60_lines():
    found = long_functions()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, "functions over %d lines (split them along their seams): %s" % (LIMIT, new)


def test_allowlist_only_holds_current_offenders():
    stale = sorted(set(ALLOWED) - set(long_functions()))
    assert not stale, f"now under {LIMIT} lines or gone, remove from ALLOWED: {stale}"


def test_the_check_catches_a_long_function(tmp_path):
    """The scan itself can fail: a 61-line method in a copy of the tree is reported under its qualified name."""
    pkg = tmp_path / "actors"
    pkg.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(59))
    (pkg / "m.py").write_text(f"class C:\n    def long(self):\n{body}\n        return 0\n\n    def short(self):\n"
                              "        return 1\n")
    assert long_functions(tmp_path) == {"actors/m.py::C.long": 61}
