"""The plan of the package stays visible: no module under lsearch/ over 450 lines, no function
over 60 lines of code (scripts/check_sizes.py, the rule issue 17 set), and every package says
in its `__init__.py` docstring what it is for."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lsearch"


def check_sizes() -> object:
    """scripts/check_sizes.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "scripts/check_sizes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_or_function_over_its_limit() -> None:
    assert check_sizes().oversized(PACKAGE) == []


def test_the_size_check_finds_what_is_over(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {i}" for i in range(61))
    (tmp_path / "long.py").write_text(f'def long():\n    """Doc."""\n{body}\n')
    (tmp_path / "short.py").write_text('def short():\n    """Doc."""\n    return 1\n')
    found = check_sizes().oversized(tmp_path)
    assert len(found) == 1 and "long() has 61 lines of code" in found[0]


def test_every_package_says_what_it_is_for() -> None:
    packages = sorted(PACKAGE.rglob("__init__.py"))
    assert len(packages) > 5
    missing = [
        str(path.relative_to(ROOT))
        for path in packages
        if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    ]
    assert missing == []
