"""The package layout follows the recipe: each stage imports only the stages below it, never above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mini_o3"

# Lowest first. A module may import from its own unit or any unit earlier in this list.
ORDER = ["lazy", "jsonl", "agent", "models", "data", "policies", "eval", "coldstart", "train", "demo", "serve", "cli", "__main__"]


def unit_of(module: str) -> str:
    """The layout unit ('agent', 'eval', 'jsonl', ...) a dotted mini_o3 module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every mini_o3 module a source file imports (top level or inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("mini_o3"):
            if node.module == "mini_o3":
                found += [(node.lineno, f"mini_o3.{alias.name}") for alias in node.names if alias.name != "__version__"]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("mini_o3.")]
    return found


def module_name(path: Path) -> str:
    return "mini_o3." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_module_belongs_to_a_known_unit():
    units = {unit_of(module_name(p)) for p in SOURCES} - {"__init__"}
    assert units <= set(ORDER), f"add {sorted(units - set(ORDER))} to ORDER where it belongs in the recipe"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_down_the_recipe(path: Path):
    here = unit_of(module_name(path))
    if here == "__init__":
        return
    upward = [
        f"line {line}: {target}"
        for line, target in imports_of(path)
        if unit_of(target) != "__init__" and ORDER.index(unit_of(target)) > ORDER.index(here)
    ]
    assert not upward, f"{path.relative_to(SRC)} ({here}) imports from later stages: {upward}"
