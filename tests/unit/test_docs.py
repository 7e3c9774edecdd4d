"""The docs name code that exists: every ``berth._module.name`` they cite can be imported."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cited() -> list[tuple[str, str]]:
    pattern = re.compile(r"\bberth\.(?:_\w+)(?:\.\w+)*")
    return [(doc.name, m.group(0)) for doc in DOCS for m in pattern.finditer(doc.read_text())]


@pytest.mark.parametrize(("doc", "name"), _cited())
def test_a_cited_module_or_name_exists(doc: str, name: str) -> None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{doc} cites {name}: {'.'.join(parts[:i])} has no {attr}"
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{doc} cites {name}, which does not exist")
