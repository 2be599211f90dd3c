"""The package's floors: every import points down (or stays inside its own package), so
that data flows one way: files and definitions -> training -> measuring -> pruning -> studies
-> commands. Walks every module's imports, lazy ones inside functions included."""

import ast
from pathlib import Path

import implicit_sparsity

#: From the ground up; a package may import its own modules and those of lower floors only.
FLOORS = (
    ("errors", "defaults"),
    ("io",),
    ("data", "models", "optim"),
    ("measure",),
    ("prune",),  # below train: a run harvests its dead filters while it trains
    ("train",),
    ("study",),
    ("explicit", "demo"),
    ("findings",),
    ("commands",),
    ("cli", "__init__"),
    ("__main__",),
)
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
ROOT = Path(implicit_sparsity.__file__).parent


def imported_packages(path: Path) -> set[str]:
    """The top-level parts of implicit_sparsity that a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "implicit_sparsity":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from implicit_sparsity import defaults
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "implicit_sparsity" and len(parts) > 1:
                    found.add(parts[1])
    return found


def own_package(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_every_module_has_a_floor():
    packages = {own_package(p) for p in ROOT.rglob("*.py")}
    assert packages <= set(FLOOR), f"modules without a floor: {sorted(packages - set(FLOOR))}"


def test_every_import_points_down():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        mine = own_package(path)
        for other in imported_packages(path) - {mine}:
            assert other in FLOOR, f"{path}: imports unknown part {other}"
            if FLOOR[other] >= FLOOR[mine]:
                wrong.append(f"{path.relative_to(ROOT)} ({mine}, floor {FLOOR[mine]}) imports "
                             f"{other} (floor {FLOOR[other]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from implicit_sparsity.prune.api import prune_model\n"
                      "from implicit_sparsity import defaults\n")
    assert imported_packages(module) == {"prune", "defaults"}
