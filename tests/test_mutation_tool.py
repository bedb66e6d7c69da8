"""scripts/mutation.py, the mutation-testing tool: its score, its diffs, its equivalence rules
and its bundles, on hand-made workspaces (mutmut itself is not run here).

Run: .venv/bin/python -m pytest tests/test_mutation_tool.py -q
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.helpers import REPO


@pytest.fixture
def tool(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutation_tool", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "WORK", tmp_path / "work")
    return module


# A mutated file as mutmut writes it: every mutant a function beside the original's copy.
MUTATED = '''\
def x_clip__mutmut_orig(v, lo):
    """Docstring."""
    return max(v, lo)


def x_clip__mutmut_1(v, lo):
    """Docstring."""
    return min(v, lo)


def x_clip__mutmut_2(v, lo):
    """Docstring."""
    return max(v, lo + 1)


class Box:
    def xǁBoxǁsize__mutmut_orig(self):
        return self.n * 2

    def xǁBoxǁsize__mutmut_1(self):
        return self.n / 2
'''


def _workspace(tool, name: str, codes: dict[str, int | None]) -> None:
    """A module's workspace holding MUTATED and the verdicts `codes` (short mutant names)."""
    path = tool.MODULES[name].path
    ws = tool.WORK / name
    (ws / "mutants" / path).parent.mkdir(parents=True)
    (ws / "mutants" / path).write_text(MUTATED)
    module = path[:-3].replace("/", ".")
    meta = {"exit_code_by_key": {f"{module}.{k}": v for k, v in codes.items()}}
    (ws / "mutants" / (path + ".meta")).write_text(json.dumps(meta))
    for rel in ("pyproject.toml", path, "mutmut.log"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(f"{rel}\n")


def test_diffs_show_the_changed_lines_of_functions_and_methods(tool):
    _workspace(tool, "evaluation.metrics", {})
    ws, path = tool.WORK / "evaluation.metrics", "streammind/evaluation/metrics.py"
    names = ["m.x_clip__mutmut_1", "m.x_clip__mutmut_2", "m.xǁBoxǁsize__mutmut_1", "m.x_clip__mutmut_9"]
    diffs = tool._diffs(ws, names, path)
    changed = {k: [line for line in d.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] for k, d in diffs.items()}
    assert changed["m.x_clip__mutmut_1"] == ["-    return max(v, lo)", "+    return min(v, lo)"]
    assert changed["m.x_clip__mutmut_2"] == ["-    return max(v, lo)", "+    return max(v, lo + 1)"]
    assert changed["m.xǁBoxǁsize__mutmut_1"] == ["-        return self.n * 2", "+        return self.n / 2"]
    assert diffs["m.x_clip__mutmut_9"] == f"(no function x_clip__mutmut_9 in mutants/{path})"
    assert " def clip(v, lo):" in diffs["m.x_clip__mutmut_1"] and " def size(self):" in diffs["m.xǁBoxǁsize__mutmut_1"]


def test_equivalence_rules_match_the_changed_text(tool):
    diff = "--- f\n+++ f\n@@ -1 +1 @@\n-    return max(v, lo)\n+    return min(v, lo)"
    E = tool.Equivalent
    assert E("x_clip", "min(v", "r").matches("m.x_clip__mutmut_1", diff)
    assert not E("x_clip", "max(v, lo + 1)", "r").matches("m.x_clip__mutmut_1", diff)
    assert not E("x_other", "min(v", "r").matches("m.x_clip__mutmut_1", diff)  # another function
    assert E("x_clip", None, "r", removed="return max(").matches("m.x_clip__mutmut_1", diff)  # any change of that line
    assert not E("x_clip", None, "r", removed="return min(").matches("m.x_clip__mutmut_1", diff)
    assert not E("x_clip", "", "r", removed="return max(").matches("m.x_clip__mutmut_1", diff)  # "": the line deleted only


def test_report_scores_killed_over_the_counted_mutants(tool, tmp_path):
    """1 killed, 1 timeout (killed), 1 survivor, 1 not run: 2 / 3 counted = 66.7 %."""
    _workspace(tool, "evaluation.metrics", {"x_clip__mutmut_1": 1, "x_clip__mutmut_2": 0, "xǁBoxǁsize__mutmut_1": -24,
                                            "x_clip__mutmut_3": None})
    score = tool.report(["evaluation.metrics"], tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert score == pytest.approx(200 / 3)
    assert "| evaluation.metrics | 4 | 2 | 1 | 0 | 0 | 1 | 66.7 % |" in text
    assert "x_clip__mutmut_2` (survived)" in text and "+    return max(v, lo + 1)" in text


def test_a_bundle_carries_the_verdicts_to_another_tree(tool, tmp_path):
    _workspace(tool, "evaluation.metrics", {"x_clip__mutmut_1": 1, "x_clip__mutmut_2": 0})
    files = {p.relative_to(tool.WORK): p.read_bytes() for p in tool.WORK.rglob("*") if p.is_file()}
    tool.bundle(["evaluation.metrics", "gate"], tmp_path / "b.tar.gz")  # gate has no run: nothing of it
    tool.WORK = tmp_path / "elsewhere"
    (tool.WORK / "evaluation.metrics").mkdir(parents=True)
    (tool.WORK / "evaluation.metrics" / "stale.txt").write_text("from an older run")
    assert tool.unbundle(tmp_path / "b.tar.gz") == ["evaluation.metrics"]
    assert {p.relative_to(tool.WORK): p.read_bytes() for p in tool.WORK.rglob("*") if p.is_file()} == files
    for argv in ([], ["evaluation.metrics"]):  # the modules in the bundle, or the ones named
        tool.WORK = tmp_path / f"third{len(argv)}"
        assert tool.main([*argv, "--unbundle", str(tmp_path / "b.tar.gz"), "--report", str(tmp_path / "r.md")]) == 0
        assert "| evaluation.metrics | 2 | 1 | 1 | 0 | 0 | 0 | 50.0 % |" in (tmp_path / "r.md").read_text()
