"""Lists modules under lsearch/ over 450 lines and functions over 60 lines of code.

A function's length counts from its first statement (its docstring skipped) to its last line,
so a CLI command's option declarations do not count. Exit 1 when anything is over.

    python scripts/check_sizes.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def oversized(root: Path) -> list[str]:
    """Every module and function under ``root`` over its limit, as ``path:line: what``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{path}: module of {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
                and len(body) > 1
            ):
                body = body[1:]
            length = node.end_lineno - body[0].lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(
                    f"{path}:{node.lineno}: {node.name}() has {length} lines of code "
                    f"(at most {MAX_FUNCTION_LINES})"
                )
    return found


if __name__ == "__main__":
    problems = oversized(Path(__file__).resolve().parent.parent / "lsearch")
    print("\n".join(problems) or "every module and function within its limit")
    sys.exit(1 if problems else 0)
