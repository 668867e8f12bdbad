"""The platform's dependencies run one way (docs/architecture.md, "Layers").

Each package, or module of the project package, belongs to a layer; code may import its
own layer and those below it, never one above. Read from the source with `ast`, every
import counts, also one inside a function: a deferred import is still a dependency.
Quotas answer what fits and never import runs; runs admit and call quotas; the workers
are the outer layer, and nothing below them imports them.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "engine", REPO / "platform", REPO / "workers", REPO / "devstack"]

# Lowest first. A name is a package or a dotted module; the longest match decides.
LAYERS: list[tuple[str, list[str]]] = [
    ("engine", ["engine"]),
    # The project package's plain helpers, which import no app: shared by every app.
    (
        "base",
        [
            "rollyard.defaults",
            "rollyard.params",
            "rollyard.paths",
            "rollyard.pagination",
            "rollyard.spec_text",
            "rollyard.text",
            "rollyard.task_names",
            "rollyard.celery",
            "rollyard.dispatch",
        ],
    ),
    ("accounts", ["accounts"]),
    ("catalog", ["catalog"]),
    ("quotas", ["quotas"]),
    ("runs", ["runs"]),
    # The rest of the project package: settings, URLs, ASGI, the API's error mapping.
    ("project", ["rollyard", "manage"]),
    ("workers", ["workers"]),
    ("devstack", ["devstack"]),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> int | None:
    """The rank of `module`'s layer, None for the standard library and third parties."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        rank = RANK.get(".".join(parts[:end]))
        if rank is not None:
            return rank
    return None


def module_name(path: Path) -> str:
    root = REPO / "platform" if path.is_relative_to(REPO / "platform") else REPO
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from rollyard import dispatch` imports the module rollyard.dispatch (base),
            # not the package (project): judge a named module itself.
            found += [(node.lineno, _module_or_package(base, alias.name)) for alias in node.names]
    return found


def _module_or_package(package: str, name: str) -> str:
    """`package.name` when that is a module of ours, else `package` (a name defined in it)."""
    relative = Path(*f"{package}.{name}".split("."))
    for root in (REPO, REPO / "platform"):
        if (root / relative).with_suffix(".py").is_file() or (root / relative / "__init__.py").is_file():
            return f"{package}.{name}"
    return package


def violations() -> list[str]:
    wrong = []
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            module = module_name(path)
            own = layer_of(module)
            if own is None:
                continue
            for line, imported in sorted(set(imports_of(path, module))):
                theirs = layer_of(imported)
                if theirs is not None and theirs > own:
                    wrong.append(
                        f"{path.relative_to(REPO)}:{line}: {module} ({LAYERS[own][0]}) imports {imported} ({LAYERS[theirs][0]})"
                    )
    return wrong


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_the_check_sees_an_import_against_the_order(tmp_path):
    # The check itself, on made-up code: quotas importing runs (inside a function, too)
    # and a base helper importing an app are caught; runs importing quotas is fine.
    assert layer_of("quotas.admission") < layer_of("runs.lifecycle") < layer_of("workers.tasks")
    assert layer_of("rollyard.dispatch") < layer_of("accounts") < layer_of("rollyard.settings")
    assert layer_of("celery") is None and layer_of("runs") == layer_of("runs.launch")
    code = tmp_path / "admission.py"
    code.write_text("from runs import lifecycle\n\ndef f():\n    from workers.capacity import cluster_free_gpus\n")
    assert imports_of(code, "quotas.admission") == [(1, "runs.lifecycle"), (4, "workers.capacity")]
    code.write_text("from . import models\nfrom ..accounts import services\nfrom rollyard import dispatch, settings\n")
    found = imports_of(code, "quotas.admission")
    assert found == [(1, "quotas.models"), (2, "accounts.services"), (3, "rollyard.dispatch"), (3, "rollyard.settings")]
    # Of these, only the import of runs, the workers and the project's settings go up.
    above = [name for _, name in found + [(1, "runs.lifecycle"), (4, "workers.capacity")] if layer_of(name) > layer_of("quotas")]
    assert above == ["rollyard.settings", "runs.lifecycle", "workers.capacity"]
