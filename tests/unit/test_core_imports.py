"""The core (`pushsvc.core`) knows no web framework: importing all of it loads no Quart,
werkzeug or Hypercorn module, and the fast door imports no Quart route module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pushsvc.core

CORE = Path(pushsvc.core.__file__).parent
FRAMEWORKS = ("quart", "werkzeug", "hypercorn", "flask")


def test_importing_the_core_loads_no_web_framework():
    modules = sorted(f"pushsvc.core.{path.stem}" for path in CORE.glob("*.py") if path.stem != "__init__")
    assert {"pushsvc.core.errors", "pushsvc.core.publishing", "pushsvc.core.streams"} <= set(modules)
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}}}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_fast_door_imports_no_quart_route_module():
    tree = ast.parse((CORE.parent / "fastpath.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("routes") or ".routes" in name]
    assert not [name for name in imported if name.split(".")[0] == "quart"]
