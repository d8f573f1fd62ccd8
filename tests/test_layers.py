"""No module imports from a floor above its own (the map in lib/vlmloc/README.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "vlmloc"


def floors(readme: Path = LIB / "README.md") -> dict[str, int]:
    """``{module or folder/: floor}`` from the README's map (``N name  module module folder/ ...``)."""
    text = readme.read_text(encoding="utf-8")
    block = re.search(r"<!-- floors:.*?```text\n(.*?)```", text, re.S)
    assert block, f"{readme} has no floors map"
    out: dict[str, int] = {}
    for line in block.group(1).splitlines():
        level, _name, *members = line.split()
        for m in members:
            assert m not in out, f"{m} is on two floors"
            out[m] = int(level)
    return out


def module_name(path: Path, root: Path = LIB) -> str:
    """``vlmloc/experiments/base.py`` -> ``experiments.base``; the package's ``__init__`` -> ``__init__``."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def floor_of(module: str, table: dict[str, int]) -> int | None:
    """The floor of ``module``: its own entry, else its top folder's (``experiments/``)."""
    if module in table:
        return table[module]
    return table.get(module.split(".")[0] + "/")


def imports(path: Path, root: Path = LIB) -> set[str]:
    """The ``vlmloc`` modules ``path`` imports (relative or absolute), at any depth of the file."""
    module = module_name(path, root)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package = []
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif node.module and (node.module == "vlmloc" or node.module.startswith("vlmloc.")):
                base = []
                node = ast.ImportFrom(
                    module=node.module.removeprefix("vlmloc").lstrip("."), names=node.names, level=1
                )
            else:
                continue
            target = [*base, *(node.module.split(".") if node.module else [])]
            for (
                alias
            ) in node.names:  # ``from . import plots``: a module; ``from . import load_model``: the package
                sub = [*target, alias.name]
                is_module = root.joinpath(*sub).with_suffix(".py").is_file() or root.joinpath(*sub).is_dir()
                out.add(".".join(sub) if is_module else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("vlmloc.") for a in node.names if a.name.startswith("vlmloc."))
    return out


def upward_imports(root: Path = LIB) -> list[str]:
    """One line per import that points up a floor, and per module the map does not place."""
    table = floors(root / "README.md")
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = floor_of(module, table)
        if own is None:
            problems.append(f"{module} is on no floor: add it to lib/vlmloc/README.md's map")
            continue
        for target in sorted(imports(path, root)):
            theirs = floor_of(target, table)
            if theirs is not None and theirs > own:
                problems.append(f"{module} (floor {own}) imports {target} (floor {theirs})")
    return problems


def test_every_module_imports_only_from_its_floor_or_below():
    problems = upward_imports()
    assert not problems, "imports that point up a floor:\n" + "\n".join(problems)


def test_the_map_names_only_modules_that_exist():
    for member in floors():
        path = LIB / member.rstrip("/")
        assert path.is_dir() or path.with_suffix(".py").is_file(), (
            f"the floors map names {member}, which does not exist"
        )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            "from ..report.common import number\n",
            "experiments.ch99_probe (floor 4) imports report.common (floor 5)",
        ),
        ("from vlmloc.chapters import main\n", "experiments.ch99_probe (floor 4) imports chapters (floor 6)"),
        (
            "def f():\n    from .. import preamble\n",
            "experiments.ch99_probe (floor 4) imports preamble (floor 6)",
        ),
    ],
)
def test_an_upward_import_is_caught(source, problem, tmp_path):
    """A copy of the package with one module that imports up: the check names it (lazy imports too)."""
    import shutil

    root = tmp_path / "vlmloc"
    shutil.copytree(LIB, root, ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
    (root / "experiments" / "ch99_probe.py").write_text(source, encoding="utf-8")
    assert problem in upward_imports(root)
