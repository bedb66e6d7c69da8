"""The offline suite (`streammind eval offline`): detection under the release's folder names,
one run over the fixtures with a tiny model and a fake judge on loopback, the summary table
(skipped, failed, unjudged rows), and the release-layout video folders the loaders fall back to.

Run: .venv/bin/python -m pytest tests/eval/test_offline_suite.py -q
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streammind.apps.cli import main as cli_main
from streammind_eval.offline_suite import BENCHMARKS, BenchmarkFailed, NotFound, _run_main, main
from streammind_eval.qa_mc import load_egoschema, load_videomme
from streammind_eval.qa_open import OpenQATask
from tests.fake_judge import FAKE_KEY, SCORES, FakeServer, fake_verdict
from tests.helpers import OFFLINE_FIXTURES as FIXTURES
from tests.helpers import save_tiny_model, world_video

DETECT = {b.name: b.detect for b in BENCHMARKS}

# ---- detection -------------------------------------------------------------------------


def test_detection_names_the_first_missing_path(tmp_path):
    with pytest.raises(NotFound) as missing:
        DETECT["coin"](tmp_path / "coin")
    assert missing.value.path == tmp_path / "coin" / "COIN.json"
    shutil.copytree(FIXTURES / "activitynet_qa", tmp_path / "anet")
    (tmp_path / "anet" / "test_a.json").unlink()
    with pytest.raises(NotFound) as missing:
        DETECT["activitynet_qa"](tmp_path / "anet")
    assert missing.value.path == tmp_path / "anet" / "test_a.json"
    (tmp_path / "mvbench" / "json").mkdir(parents=True)
    with pytest.raises(NotFound, match="action_sequence.json"):
        DETECT["mvbench"](tmp_path / "mvbench")
    (tmp_path / "videomme").mkdir()
    (tmp_path / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(NotFound) as missing:
        DETECT["videomme"](tmp_path / "videomme")
    assert missing.value.path == tmp_path / "videomme" / "videomme.json" and "parquet" in missing.value.hint
    with pytest.raises(NotFound) as missing:
        DETECT["videomme"](tmp_path / "nothing")
    assert missing.value.path == tmp_path / "nothing"


def test_detection_arguments(tmp_path):
    shutil.copytree(FIXTURES / "mvbench", tmp_path / "mvbench")
    assert DETECT["mvbench"](tmp_path / "mvbench") == ["--dataset", "mvbench", "--tasks", "action_sequence", "action_antonym",
                                                       "episodic_reasoning"]
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "mc_question_test.json").write_text("{}")
    assert DETECT["perceptiontest"](tmp_path / "pt") == ["--dataset", "perceptiontest", "--split", "test"]
    shutil.copytree(FIXTURES / "ego4d_lta", tmp_path / "ego4d")
    (tmp_path / "ego4d" / "v2" / "clips").mkdir(parents=True)
    assert DETECT["ego4d_lta"](tmp_path / "ego4d") == ["--split", "val", "--video-source", "clips"]
    (tmp_path / "ego4d" / "v2" / "full_scale").mkdir()
    assert DETECT["ego4d_lta"](tmp_path / "ego4d")[-1] == "full_scale"


def test_loaders_fall_back_to_the_release_video_folders(tmp_path):
    shutil.copytree(FIXTURES / "egoschema", tmp_path / "egoschema")
    (tmp_path / "egoschema" / "good_clips_git").mkdir()
    assert load_egoschema(tmp_path / "egoschema")[0]["video"].endswith("good_clips_git/q-001")
    shutil.copytree(FIXTURES / "videomme", tmp_path / "videomme")
    (tmp_path / "videomme" / "videos").mkdir()
    assert load_videomme(tmp_path / "videomme")[0]["video"].endswith("videos/fFjv93ACGo8")
    (tmp_path / "videomme" / "data").mkdir()  # data/ (the module's own name) wins when both exist
    assert load_videomme(tmp_path / "videomme")[0]["video"].endswith("data/fFjv93ACGo8")
    shutil.copytree(FIXTURES / "activitynet_qa", tmp_path / "anet")
    assert OpenQATask("activitynet", tmp_path / "anet", judge=None).video_dir == tmp_path / "anet" / "videos"
    (tmp_path / "anet" / "all_test").mkdir()
    assert OpenQATask("activitynet", tmp_path / "anet", judge=None).video_dir == tmp_path / "anet" / "all_test"


def test_a_benchmark_that_exits_fails_with_its_last_error_line(tmp_path):
    with pytest.raises(BenchmarkFailed, match=r"^streammind eval qa_mc: error: argument --dataset: invalid choice: 'nope'"):
        _run_main("qa_mc", ["--dataset", "nope", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    _run_main("qa_mc", ["--help"])  # exit status 0 is not a failure

# ---- one run over the fixtures -----------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("suite_model"), tiny_tokenizer_dir)


def suite_root(tmp_path, small_world):
    """A data root in the release's layout: seven benchmarks present, Ego4D absent, Video-MME
    as the released parquet only, PerceptionTest with a broken question file."""
    root = tmp_path / "eval_data"
    layout = {
        "coin": ("coin", {"videos/vidA.mp4": 0, "videos/vidB.mp4": 1}),
        "MSVD_Zero_Shot_QA": ("msvd_qa", {"videos/clipOne.mp4": 0, "videos/clipTwo.mp4": 1}),
        "Activitynet_Zero_Shot_QA": ("activitynet_qa", {"all_test/v_abc.mp4": 2}),
        "mvbench": ("mvbench", {"video/star/Charades_v1_480/AB12C.mp4": 0}),
        "egoschema": ("egoschema", {"good_clips_git/q-001.mp4": 0}),
        "perception_test_mcqa": ("perceptiontest", {}),
        "videochatgpt_gen": ("videochatgpt", {"Test_Videos/v_alpha.mp4": 0, "Test_Videos/v_beta.mp4": 1}),
    }
    for folder, (fixture, videos) in layout.items():
        shutil.copytree(FIXTURES / fixture, root / folder)
        for destination, index in videos.items():
            (root / folder / destination).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(world_video(small_world, index), root / folder / destination)
    (root / "videomme").mkdir()
    (root / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    (root / "perception_test_mcqa" / "mc_question_valid.json").write_text('{"video_1": {"mc_question": [')
    return root


# Video-ChatGPT with every verdict usable: correctness (4 + 2 + 3) / 3 = 3, detail (3 + 1 + 5) / 3 = 3,
# context (5 + 3 + 4) / 3 = 4, temporal (2 + 0) / 2 = 1 (v_gamma has no video), consistency (5 + 1) / 2 = 3,
# average (3 + 3 + 4 + 1 + 3) / 5 = 2.8.
SUITE_SCORES = dict(SCORES) | {("correctness", "Red."): "3"}


def _judge(body, n):
    """The QA prompt: yes / 5 when the correct answer is "circle", else no / 1; Video-ChatGPT: SUITE_SCORES."""
    user = body["messages"][-1]["content"]
    if body["messages"][0]["content"].startswith("You grade short answers"):
        return 200, '{"match": "yes", "score": 5}' if "Correct answer: circle" in user else '{"match": "no", "score": 1}', {}
    return fake_verdict(body, SUITE_SCORES)


@pytest.fixture
def judge_env(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = FakeServer(_judge)
    monkeypatch.setenv("STREAMMIND_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("STREAMMIND_JUDGE_MODEL", "fake-judge")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    yield server
    server.close()


def test_suite_over_the_fixtures(tmp_path, small_world, model_dir, judge_env):
    root = suite_root(tmp_path, small_world)
    out = tmp_path / "out"
    status = cli_main(["eval", "offline", "--data-root", str(root), "--model", str(model_dir), "--out", str(out),
                       "--num-frames", "2", "--max-new-tokens", "3"])
    assert status == 1  # PerceptionTest failed; the others ran or were skipped
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["benchmarks"]}
    assert list(rows) == ["coin", "ego4d_lta", "msvd_qa", "activitynet_qa", "mvbench", "videomme", "egoschema",
                          "perceptiontest", "videochatgpt"]
    assert {name: r["status"] for name, r in rows.items()} == {
        "coin": "ok", "ego4d_lta": "skipped", "msvd_qa": "ok", "activitynet_qa": "ok", "mvbench": "ok", "videomme": "skipped",
        "egoschema": "ok", "perceptiontest": "failed", "videochatgpt": "ok"}
    assert summary["judge"] == f"fake-judge at {judge_env.url}"

    # Absent data is skipped with the path checked, never scored.
    assert rows["ego4d_lta"]["reason"] == f"not found: {root / 'ego4d' / 'annotations' / 'fho_lta_taxonomy.json'}"
    assert rows["ego4d_lta"]["values"] == {} and rows["ego4d_lta"]["num_examples"] is None
    assert rows["videomme"]["reason"].startswith(f"not found: {root / 'videomme' / 'videomme.json'}; convert the parquet")
    assert rows["perceptiontest"]["reason"] == ("streammind eval qa_mc: error: "
                                                f"{root / 'perception_test_mcqa' / 'mc_question_valid.json'}:1: invalid JSON (Expecting value at column 30)")

    # The judged benchmarks, by hand: MSVD-QA and ActivityNet-QA each 1 yes (5) + 1 no (1) + 1 missing video (0).
    assert rows["msvd_qa"]["values"] == pytest.approx({"accuracy": 1 / 3, "score": 2.0})
    assert rows["activitynet_qa"]["values"] == pytest.approx({"accuracy": 1 / 3, "score": 2.0})  # videos in all_test/
    assert (rows["activitynet_qa"]["num_examples"], rows["activitynet_qa"]["num_failed"]) == (3, 1)
    assert rows["videochatgpt"]["values"] == pytest.approx(
        {"correctness": 3.0, "detail": 3.0, "context": 4.0, "temporal": 1.0, "consistency": 3.0, "average": 2.8})
    assert (rows["videochatgpt"]["num_examples"], rows["videochatgpt"]["num_failed"]) == (7, 1)

    # The others: the table carries each module's own main metric and counts.
    coin = json.loads((out / "coin" / "metrics.json").read_text())
    assert rows["coin"]["values"] == {"step": coin["step"]["accuracy"], "next": coin["next"]["accuracy"],
                                      "task": coin["task"]["accuracy"], "procedure": coin["procedure"]["accuracy"],
                                      "procedure+": coin["taskprocedure"]["accuracy"]}
    assert rows["coin"]["num_examples"] == sum(m["num_examples"] for m in coin.values())
    egoschema = json.loads((out / "egoschema" / "metrics.json").read_text())
    assert rows["egoschema"]["values"] == {"accuracy": egoschema["metrics"]["accuracy"]}
    assert (rows["egoschema"]["num_examples"], rows["egoschema"]["num_failed"]) == (3, 2)  # q-001 from good_clips_git/
    mvbench = json.loads((out / "mvbench" / "metrics.json").read_text())
    assert rows["mvbench"]["values"] == {"accuracy": mvbench["metrics"]["accuracy"]} and rows["mvbench"]["num_examples"] == 4

    table = (out / "summary.md").read_text()
    assert "| Video-ChatGPT | ok | judge score 0-5 | correctness 3 · detail 3 · context 4 · temporal 1 · consistency 3 · average 2.8 | 7 | 1 |" in table
    assert "| MSVD-QA | ok | judge accuracy, score 0-5 | accuracy 0.3333 · score 2 | 3 | 1 |" in table
    assert f"| Ego4D LTA | skipped (not found: {root / 'ego4d' / 'annotations' / 'fho_lta_taxonomy.json'}) | ED@20, lower is better | — | — | — |" in table
    assert "| PerceptionTest | failed (streammind eval qa_mc: error: " in table
    assert FAKE_KEY not in table + (out / "summary.json").read_text()


def test_suite_without_a_judge_answers_but_does_not_score(tmp_path, small_world, model_dir, monkeypatch):
    import streammind.builder

    monkeypatch.delenv("STREAMMIND_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("STREAMMIND_JUDGE_MODEL", raising=False)
    loads = []
    load_model = streammind.builder.load_model
    monkeypatch.setattr(streammind.builder, "load_model", lambda *a, **k: loads.append(a) or load_model(*a, **k))
    root = suite_root(tmp_path, small_world)
    out = tmp_path / "out"
    assert main(["--data-root", str(root), "--model", str(model_dir), "--out", str(out), "--only", "videochatgpt", "egoschema",
                 "--num-frames", "2", "--max-new-tokens", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"] is None and [r["name"] for r in summary["benchmarks"]] == ["egoschema", "videochatgpt"]
    assert len(loads) == 1  # one model for both benchmarks
    vcgpt = summary["benchmarks"][1]
    assert vcgpt["status"] == "answered, not judged" and vcgpt["values"] == {}
    assert "streammind eval videochatgpt --predictions" in vcgpt["reason"]
    assert len((out / "videochatgpt" / "predictions.jsonl").read_text().splitlines()) == 7
    assert "| Video-ChatGPT | answered, not judged (no judge configured: " in (out / "summary.md").read_text()


def test_suite_stops_with_one_line_when_the_model_does_not_load(tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "egoschema", root / "egoschema")
    assert main(["--data-root", str(root), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streammind eval offline: error: ")


# ---- the command line ------------------------------------------------------------------


def test_streammind_eval_dispatch(capsys):
    assert cli_main(["eval"]) == 2 and "usage: streammind eval NAME" in capsys.readouterr().err
    assert cli_main(["eval", "--help"]) == 0 and "videochatgpt" in capsys.readouterr().out
    assert cli_main(["eval", "bleu"]) == 2 and "unknown benchmark 'bleu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", "videochatgpt", "--help"])
    assert exit_.value.code == 0 and "generic_qa.json" in capsys.readouterr().out


def test_offline_script_runs_the_suite_module():
    script = Path(__file__).resolve().parents[2] / "scripts" / "eval" / "offline.sh"
    proc = subprocess.run([str(script), "--help"], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "streammind eval offline" in proc.stdout and "videochatgpt_gen/" in proc.stdout
