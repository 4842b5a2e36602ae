"""Code blocks of README.md and docs/*.md, as the doc test runs them.

A fenced block whose language is a shell (`sh`, `bash`, `shell`), `python` or JavaScript
(`js`, `javascript`) is executed by tests/e2e/test_doc_snippets.py against a running
pushsvc.  Two HTML comments, on the nearest non-blank line before the fence, change that:

* ``<!-- not run: reason -->`` -- the block cannot run here (a long-running ``serve``, the
  test command itself, Docker, a placeholder host); the reason is shown to readers of the
  source and counted by the test.
* ``<!-- run with: NAME=value NAME2=value -->`` -- the service for this block is started
  with these extra environment variables (e.g. private channels and a JWT secret).

Blocks in other languages (output samples, JSON, nginx configuration) are documentation,
not commands, and are not run.  Addresses in the blocks are the ones a reader uses
(``127.0.0.1:8000``, Redis at ``127.0.0.1:6379``); the test rewrites them to the service and
the private redis-server it started, so no block touches the machine's own Redis.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "js": "js", "javascript": "js"}
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
_RUN_WITH = re.compile(r"^<!--\s*run with:\s*(.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the opening fence, 1-based
    kind: str  # "sh", "python" or "js"
    code: str
    skip_reason: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def collect(paths: list[Path]) -> list[Snippet]:
    snippets: list[Snippet] = []
    for path in paths:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = _FENCE.match(lines[i])
            if match is None:
                i += 1
                continue
            start = i
            end = start + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            language = match.group(1).lower()
            if language in RUNNABLE:
                snippets.append(_snippet(path, lines, start, end, RUNNABLE[language]))
            i = end + 1
    return snippets


def _snippet(path: Path, lines: list[str], start: int, end: int, kind: str) -> Snippet:
    marker = ""
    before = start - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before >= 0:
        marker = lines[before].strip()
    skip = _NOT_RUN.match(marker)
    run_with = _RUN_WITH.match(marker)
    env: dict[str, str] = {}
    if run_with is not None:
        for item in shlex.split(run_with.group(1)):
            name, _, value = item.partition("=")
            env[name] = value
    return Snippet(path, start + 1, kind, "\n".join(lines[start + 1:end]) + "\n",
                   skip.group(1) if skip else None, env)


def localise(code: str, service_port: int, redis_port: int) -> str:
    """The block with the reader's addresses replaced by the test's own service and Redis."""
    code = code.replace("redis://127.0.0.1:6379", f"redis://127.0.0.1:{redis_port}")
    code = code.replace("redis://localhost:6379", f"redis://127.0.0.1:{redis_port}")
    code = re.sub(r"\bredis-cli\b(?! -p)", f"redis-cli -p {redis_port}", code)
    for host in ("127.0.0.1", "localhost"):
        code = code.replace(f"{host}:8000", f"127.0.0.1:{service_port}")
    return code
