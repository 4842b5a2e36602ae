"""pushsvc/openapi.json matches the code: the same routes and methods, and for every route
the error statuses the code can answer with (read from the handlers and what they call)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import sys
import textwrap
from importlib.resources import files
from typing import Any

import pushsvc
from pushsvc.app import create_app
from pushsvc.config import Settings
from pushsvc.errors import ApiError

SPEC = json.loads(files("pushsvc").joinpath("openapi.json").read_text())
IGNORED_METHODS = {"HEAD", "OPTIONS"}

# Every pushsvc module loaded, so that the method-name scan below sees the same classes
# whichever tests ran before (a name unique in a partial import may not be unique).
for _module in pkgutil.walk_packages(pushsvc.__path__, "pushsvc."):
    importlib.import_module(_module.name)


def app_routes() -> dict[tuple[str, str], Any]:
    app = create_app(Settings())
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in set(rule.methods or ()) - IGNORED_METHODS:
            routes[(path, method.lower())] = app.view_functions[rule.endpoint]
    return routes


def spec_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, item in SPEC["paths"].items() for method in item}


def _methods_named(name: str) -> list[Any]:
    """Functions called `name` on pushsvc classes (for `obj.method(...)` calls)."""
    found = []
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("pushsvc") or module is None:
            continue
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__ == module_name:
                method = value.__dict__.get(name)
                if inspect.isfunction(method):
                    found.append(method)
    return found


def _callee(node: ast.Call, namespace: dict[str, Any]) -> Any:
    if isinstance(node.func, ast.Name):
        return namespace.get(node.func.id)
    if isinstance(node.func, ast.Attribute):
        if any(hasattr(builtin, node.func.attr) for builtin in (str, bytes, list, dict, set, tuple)):
            return None  # `after.count(".")` is str.count, not some pushsvc class's `count`
        candidates = _methods_named(node.func.attr)
        if len(candidates) == 1:  # an unambiguous method of a pushsvc class
            return candidates[0]
    return None


def _int_literal(node: ast.AST | None) -> int | None:
    """An HTTP status written as a literal (100-599); other ints (a `return 0, 0`) are not."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value if 100 <= node.value <= 599 else None
    return None


def statuses(function: Any, seen: set[Any] | None = None) -> set[int]:
    """Statuses a handler can answer with: `ApiError(...)` raised in it or in the pushsvc
    functions it calls (recursively), and `return body, <status>` tuples."""
    seen = set() if seen is None else seen
    function = inspect.unwrap(function)
    if function in seen or not getattr(function, "__module__", "").startswith("pushsvc"):
        return set()
    seen.add(function)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    namespace = function.__globals__
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = _callee(node, namespace)
            if target is ApiError:
                status = _int_literal(node.args[2]) if len(node.args) > 2 else None
                for keyword in node.keywords:
                    if keyword.arg == "status":
                        status = _int_literal(keyword.value)
                found.add(status or ApiError.status)
            elif inspect.isfunction(target):
                found |= statuses(target, seen)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) == 2:
            status = _int_literal(node.value.elts[1])
            if status is not None:
                found.add(status)
            elif isinstance(node.value.elts[1], ast.IfExp):
                found |= {s for s in (_int_literal(node.value.elts[1].body),
                                      _int_literal(node.value.elts[1].orelse)) if s is not None}
    return found


def test_every_route_is_documented_and_every_documented_route_exists():
    assert set(app_routes()) == spec_routes()


def test_documented_statuses_match_what_each_handler_can_answer():
    mismatches = {}
    for (path, method), view in app_routes().items():
        documented = {int(code) for code in SPEC["paths"][path][method]["responses"]}
        reachable = statuses(view)
        success = {code for code in documented if code < 300}
        if reachable - success != documented - success or not success:
            mismatches[f"{method.upper()} {path}"] = {"documented": sorted(documented),
                                                      "code": sorted(reachable | success)}
    assert not mismatches, mismatches


def test_status_scanner_finds_the_errors_publish_can_return():
    # The scanner itself must see through helper functions and imported checks.
    view = app_routes()[("/publish", "post")]
    assert {400, 401, 403, 413, 415, 503} <= statuses(view)


def test_every_reference_in_the_spec_resolves():
    text = json.dumps(SPEC)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: Any = SPEC
        for part in ref.split("/"):
            node = node[part]


async def test_the_served_document_is_the_package_file():
    app = create_app(Settings())
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/openapi.json")
        assert response.status_code == 200
        assert await response.get_json() == SPEC
