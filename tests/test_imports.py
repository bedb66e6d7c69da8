"""Every module imports on a fresh clone, the layers hold, and the packaging names every package.

- every module of `streammind` and of the benchmark evaluators (`streammind_eval`, the eval/
  folder) imports (a module lost to .gitignore fails here);
- no lower layer imports a higher one: the model core <- media <- training <- synthetic /
  evaluation <- the benchmark modules / apps (`LAYERS`), and no two modules import each other
  in a circle at import time;
- pyproject.toml's package list names every package folder (a folder missing from it would
  be left out of a non-editable install).

Run: .venv/bin/python -m pytest tests/test_imports.py -q
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys

import pytest

import streammind
import streammind_eval
from tests.helpers import REPO

# Old module paths kept as one-line errors saying where their contents went.
MOVED = {"streammind.runtime": "streammind.media.sources", "streammind.datasets.video": "streammind.media.video"}
MODULES = sorted(
    m.name
    for pkg in (streammind, streammind_eval)
    for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")
)

CORE = {"configuration", "vision", "perception", "gate", "sampling", "processing", "modeling_streammind", "modeling_perframe", "builder", "decoding",
        "engine", "streaming", "streaming_perframe", "errors", "fileio", "ops"}
# layer of a module -> the layers it may import
LAYERS = {
    "core": {"core"},
    "media": {"core", "media"},
    "training": {"core", "media", "training"},
    "synthetic": {"core", "media", "training", "synthetic"},
    "evaluation": {"core", "media", "training", "evaluation"},
    "benchmarks": {"core", "media", "training", "evaluation", "benchmarks"},
    "apps": {"core", "media", "training", "synthetic", "evaluation", "benchmarks", "apps", "compat"},
    "compat": {"core", "media", "training", "synthetic", "evaluation", "apps", "compat"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "streammind_eval.score":
        return "compat"  # `python -m eval.score` of earlier versions
    if parts[0] == "streammind_eval":
        return "benchmarks"
    if len(parts) == 1:
        return "core"  # the package's public API
    if parts[1] in CORE:
        return "core"
    if parts[1] in ("media", "training", "synthetic", "evaluation", "apps"):
        return parts[1]
    return "apps" if parts[1] == "__main__" else "compat"  # the shims of old entry points


def imports_of(module: str, top_level_only: bool = False) -> set[str]:
    """The streammind / streammind_eval modules `module` imports (relative imports resolved)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] not in ("streammind", "streammind_eval"):
                continue
            found |= {f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.split(".")[0] in ("streammind", "streammind_eval") and m not in MOVED}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    if name in MOVED:
        with pytest.raises(ImportError, match=f"{name} has moved: .*{MOVED[name]}"):
            importlib.import_module(name)
        return
    importlib.import_module(name)


def test_public_api():
    from streammind import Engine, Reply, StreamingSession, StreamMindConfig, StreamMindForCausalLM, StreamMindProcessor  # noqa: F401

    assert len(MODULES) > 40


def test_importing_the_package_loads_only_the_core():
    code = ("import sys, streammind; loaded = sorted(m for m in sys.modules if m.startswith('streammind.') and m.split('.')[1] in "
            "('apps', 'training', 'evaluation', 'synthetic', 'media')); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", [m for m in MODULES if m not in MOVED])
def test_no_lower_layer_imports_a_higher_one(name):
    allowed = LAYERS[layer(name)]
    wrong = sorted(m for m in imports_of(name) if layer(m) not in allowed)
    assert not wrong, f"{name} ({layer(name)}) imports {wrong}"


def test_no_import_cycles():
    graph = {m: imports_of(m, top_level_only=True) & set(MODULES) for m in MODULES if m not in MOVED}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_pyproject_names_every_package_folder():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(setup["packages"]), setup["package-dir"]
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "streammind").rglob("*.py") if "__pycache__" not in p.parts}
    folders |= {"streammind_eval"} | {"streammind.configs" + "".join(f".{d.name}" for d in [p]) for p in (REPO / "configs").iterdir()
                                      if p.is_dir() and p.name != "__pycache__"} | {"streammind.configs"}
    assert folders <= listed, f"missing from pyproject.toml: {sorted(folders - listed)}"
    assert mapping == {"streammind.configs": "configs", "streammind_eval": "eval"}


def test_every_package_folder_is_a_regular_package():
    folders = {p.parent for root in (REPO / "streammind", REPO / "eval") for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file()) == []
