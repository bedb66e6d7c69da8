"""The entry points of earlier versions: each old `python -m` path runs the new command (with a
one-line note naming it), the old library modules say where their contents went, and
`python -m streammind` is the `streammind` command.

Run: .venv/bin/python -m pytest tests/apps/test_compat.py -q
"""

from __future__ import annotations

import runpy
import sys
import warnings

import pytest

# old `python -m` path -> the `streammind` verb that replaced it
MOVED_COMMANDS = {
    "streammind.train": "train",
    "streammind.convert": "convert",
    "streammind.world": "world",
    "streammind.tower_pretrain": "pretrain-tower",
    "streammind.quickstart": "quickstart",
    "streammind.bench": "bench",
    "streammind.features": "features",
    "streammind.datasets.converters": "convert-annotations",
    "eval.score": "score",
}


def _run_as_main(module: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before (by other tests)
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exit_.value.code


@pytest.mark.parametrize("old, verb", sorted(MOVED_COMMANDS.items()))
def test_old_entry_points_run_the_new_command(old, verb, monkeypatch, capsys):
    assert _run_as_main(old, ["--help"], monkeypatch) in (0, None)
    out, err = capsys.readouterr()
    assert f"note: `python -m {old}` is now `streammind {verb}`" in err
    assert "usage:" in out.lower() or "streammind" in out  # the new command's help


def test_old_entry_points_report_errors_as_the_new_command(monkeypatch, capsys):
    assert _run_as_main("streammind.datasets.converters", ["ego4d", "missing.json", "out.jsonl"], monkeypatch) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("streammind convert-annotations: error: missing.json")


def test_python_m_streammind_and_the_old_cli_path(monkeypatch, capsys):
    assert _run_as_main("streammind", ["eval", "--help"], monkeypatch) == 0
    assert "synthetic" in capsys.readouterr().out
    assert _run_as_main("streammind.cli", ["eval", "--help"], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "synthetic" in out and "note: `python -m streammind.cli` is now `streammind`" in err


@pytest.mark.parametrize("old, new", [("streammind.runtime", "streammind.media.sources"), ("streammind.datasets.video", "streammind.media.video")])
def test_old_library_modules_say_where_they_went(old, new):
    sys.modules.pop(old, None)
    with pytest.raises(ImportError, match=f"^{old} has moved: .*{new}"):
        __import__(old)
