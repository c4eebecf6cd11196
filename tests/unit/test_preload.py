"""netplugin/preload.py names every library a function imports lazily, and imports them."""

import ast
import sys
from pathlib import Path

from netplugin.preload import LIBRARIES, preload

PACKAGE = Path(__file__).resolve().parents[2] / "netplugin"


def lazy_imports() -> dict[str, set[str]]:
    """Third-party modules imported inside a function body: module -> files."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "netplugin":
                        found.setdefault(name, set()).add(path.name)
    return found


def test_every_lazy_import_is_preloaded():
    # gunicorn is imported by the daemon's main thread before it forks its worker.
    missing = {m: f for m, f in lazy_imports().items() if m not in LIBRARIES and m != "gunicorn.app.base"}
    assert not missing, f"add to netplugin/preload.py LIBRARIES: {missing}"


def test_preload_imports_them_all():
    preload()
    assert all(name in sys.modules for name in LIBRARIES)
