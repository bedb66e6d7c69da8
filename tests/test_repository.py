"""The repository stands on its own and its README tells the truth about it.

- nothing cites a document that is not in the tree (the specification and style notes the
  project was built from live outside it; docs/design.md holds what the code relies on);
- the README's layout section names every folder and module of the tree;
- CI runs exactly the README's test command;
- the committed clip is small and its licence is noted.

Run: .venv/bin/python -m pytest tests/test_repository.py -q
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import ASSETS, CLIP, REPO

TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".toml", ".ipynb", ".txt"}
SCANNED = ["streammind", "eval", "tests", "scripts", "docs", "configs", "notebooks", "assets", "README.md", "pyproject.toml",
           "requirements.txt", ".ci"]
OUT_OF_TREE = re.compile(r"SPEC §|SPEC\.md|STYLE §|STYLE\.md|reference/(?:original-code|peers|paper|style-anchors)")


def _text_files():
    for name in SCANNED:
        root = REPO / name
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            if (path.suffix in TEXT_SUFFIXES or path.parent.name == ".ci") and "__pycache__" not in path.parts:
                yield path


def test_nothing_cites_documents_outside_the_tree():
    here = (REPO / "tests" / "test_repository.py").resolve()
    cited = [f"{p.relative_to(REPO)}:{n}" for p in _text_files() if p.resolve() != here
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1) if OUT_OF_TREE.search(line)]
    assert not cited, cited


def _layout_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]


def test_the_readme_layout_names_every_folder_and_module():
    layout = _layout_section()
    top = sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in ("runs", "build", "dist")
                 and not p.name.endswith(".egg-info"))
    names = [f"{d}/" for d in top]
    names += [f"{p.name}/" for p in (REPO / "streammind").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names += [p.name for p in (REPO / "streammind").glob("*.py")]
    for package in ("media", "training", "evaluation", "synthetic", "apps"):
        names += [p.name for p in (REPO / "streammind" / package).glob("*.py") if p.name != "__init__.py"]
    names += [p.stem for p in (REPO / "eval").glob("*.py") if p.name != "__init__.py"]
    names += [p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"]
    missing = sorted({n for n in names if n.removesuffix("/") not in layout})
    assert not missing, f"the README's layout section does not mention {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("\n## ", readme.index("## Quick start") + 1)]
    assert "scripts/test.sh" in quick_start
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "exec scripts/test.sh"


def test_the_committed_clip_is_small_and_ours():
    assert CLIP.stat().st_size < 300 * 1024
    notes = (ASSETS / "README.md").read_text()
    assert CLIP.name in notes and "licence" in notes.lower() and "scripts/make_assets.py" in notes


@pytest.mark.parametrize("figure", ["timeline.png", "benchmark_h200.png"])
def test_the_readme_figures_exist(figure):
    assert (ASSETS / figure).is_file() and f"assets/{figure}" in (REPO / "README.md").read_text()
