"""Every declared runtime dependency is one the package imports (or says why it is declared)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dependencies() -> list[tuple[str, str]]:
    """(distribution name, the comment on its line) from pyproject's [project] dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.S | re.M)
    assert block, "pyproject.toml has no dependencies list"
    out = []
    for line in block.group(1).splitlines():
        m = re.match(r'\s*"([A-Za-z0-9_.-]+)[^"]*",?\s*(#.*)?$', line)
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def test_every_dependency_is_imported_or_explained() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "helion_remote").rglob("*.py"))
    deps = _dependencies()
    assert {"helion", "torch"} <= {name for name, _ in deps}
    unused = [name for name, why in deps
              if not why and not re.search(rf"^\s*(import|from)\s+{re.escape(name.replace('-', '_'))}\b", sources, re.M)]
    assert unused == [], f"declared but never imported (drop them, or comment why): {unused}"
