"""Open-ended QA: judge reply parsing, the HTTP judge (retries, errors) against a fake
OpenAI-compatible server on loopback started here, the loaders, and end-to-end runs with
a tiny model. No real endpoint is ever called and no real key is used.

Run: .venv/bin/python -m pytest tests/eval/test_qa_open.py -q
"""

import json
import socket

import pytest

from streammind.errors import run_command
from streammind.evaluation.judge import JudgeConfig, JudgeConfigError, JudgeError, JudgeResponseError
from streammind_eval.qa_open import (
    Judgement,
    QAJudge,
    load_activitynet,
    load_msvd,
    main,
    parse_judgement,
)
from tests.fake_judge import FAKE_KEY, FakeServer
from tests.helpers import OFFLINE_FIXTURES as FIXTURES
from tests.helpers import data_root, save_tiny_model, world_video

# ---- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"match": "yes", "score": 4}', Judgement(True, 4)),
        ('```json\n{"match": "no", "score": 1}\n```', Judgement(False, 1)),
        ("Sure! {'pred': 'yes', 'score': 5} Hope this helps.", Judgement(True, 5)),
        ('{"Match": "YES", "Score": "3"}', Judgement(True, 3)),
        ('{"match": false, "score": 0.0}', Judgement(False, 0)),
        ("match: no\nscore: 2", Judgement(False, 2)),
    ],
)
def test_parse_judgement_accepts(reply, expected):
    assert parse_judgement(reply) == expected


@pytest.mark.parametrize(
    "reply",
    ['{"match": "yes"}', '{"match": "maybe", "score": 3}', '{"match": "yes", "score": 7}', '{"match": "no", "score": 2.5}',
     "I think it is right.", ""],
)
def test_parse_judgement_rejects(reply):
    with pytest.raises(JudgeResponseError):
        parse_judgement(reply)


# ---- the fake server -------------------------------------------------------------------


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(respond):
        servers.append(FakeServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _judge(url, **overrides):
    return QAJudge(JudgeConfig(base_url=url, model="fake-judge", api_key=FAKE_KEY, backoff_s=0.0, **overrides))


def test_judge_retries_transient_errors_and_malformed_replies(serve):
    script = {1: (500, "oops", {}), 2: (429, "slow down", {"Retry-After": "0"}), 3: (200, "I would say yes.", {}),
              4: (200, '{"match": "yes", "score": 4}', {})}
    server = serve(lambda body, n: script[n])
    verdict, raw = _judge(server.url).judge(question="What?", prediction="a cat", reference="cat")
    assert verdict == Judgement(True, 4) and raw == '{"match": "yes", "score": 4}'
    assert len(server.requests) == 4
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"
    assert request["body"]["model"] == "fake-judge" and request["body"]["temperature"] == 0.0
    user = request["body"]["messages"][-1]["content"]
    assert "Question: What?" in user and "Correct answer: cat" in user and "Predicted answer: a cat" in user


def test_judge_errors(serve):
    server = serve(lambda body, n: (401, "unauthorised", {}))
    with pytest.raises(JudgeConfigError, match="401"):
        _judge(server.url).judge(question="q", prediction="p", reference="r")
    assert len(server.requests) == 1  # a configuration error is not retried
    server = serve(lambda body, n: (400, "bad request", {}))
    with pytest.raises(JudgeError, match="HTTP 400"):
        _judge(server.url).judge(question="q", prediction="p", reference="r")
    server = serve(lambda body, n: (200, "no verdict here", {}))
    with pytest.raises(JudgeError, match="after 3 attempts"):
        _judge(server.url, max_attempts=3).judge(question="q", prediction="p", reference="r")
    assert len(server.requests) == 3
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(JudgeError, match="ConnectError"):
        _judge(f"http://127.0.0.1:{port}/v1", max_attempts=2, timeout_s=2.0).judge(question="q", prediction="p", reference="r")


def test_judge_config_from_environment(monkeypatch):
    for name in ("STREAMMIND_JUDGE_BASE_URL", "STREAMMIND_JUDGE_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JudgeConfigError, match="STREAMMIND_JUDGE_BASE_URL and STREAMMIND_JUDGE_MODEL"):
        JudgeConfig.from_env()
    monkeypatch.setenv("STREAMMIND_JUDGE_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("STREAMMIND_JUDGE_MODEL", "fake-judge")
    config = JudgeConfig.from_env()
    assert (config.base_url, config.model, config.api_key) == ("http://127.0.0.1:9/v1", "fake-judge", None)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    assert JudgeConfig.from_env().api_key == FAKE_KEY and FAKE_KEY not in repr(JudgeConfig.from_env())


# ---- data ------------------------------------------------------------------------------


def test_loaders(tmp_path):
    msvd = load_msvd(FIXTURES / "msvd_qa", tmp_path)
    assert [e["id"] for e in msvd] == ["10", "11", "11#1"]  # repeated ids made unique
    assert msvd[0]["video"].endswith("clipOne.mp4") and msvd[1]["video"].endswith("clipTwo.mp4")  # youtube_mapping.txt
    assert (msvd[0]["question"], msvd[0]["reference"]) == ("what shape is shown?", "circle")
    (tmp_path / "v_abc.mkv").write_bytes(b"x")
    anet = load_activitynet(FIXTURES / "activitynet_qa", tmp_path)
    assert [(e["id"], e["reference"], e["type"]) for e in anet] == [("v_abc_1", "circle", "0"), ("v_abc_2", "yes", "3"),
                                                                   ("v_def_1", "it moves", "1")]
    assert anet[0]["video"].endswith("v_abc.mkv") and anet[2]["video"].endswith("v_def.mp4")


# ---- end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("qa_open_model"), tiny_tokenizer_dir)


def _verdicts(body, n):
    """yes/5 for the question whose answer is "circle", no/1 otherwise."""
    user = body["messages"][-1]["content"]
    return (200, '{"match": "yes", "score": 5}' if "Correct answer: circle" in user else '{"match": "no", "score": 1}', {})


def test_end_to_end_msvd_with_the_fake_judge(tmp_path, small_world, model_dir, serve, monkeypatch):
    server = serve(_verdicts)
    monkeypatch.setenv("STREAMMIND_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("STREAMMIND_JUDGE_MODEL", "fake-judge")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    root = data_root(tmp_path, "msvd_qa", {"videos/clipOne.mp4": world_video(small_world, 0),
                                          "videos/clipTwo.mp4": world_video(small_world, 1)})
    out = tmp_path / "out"
    common = ["--dataset", "msvd", "--data-root", str(root), "--num-frames", "4", "--max-new-tokens", "4"]
    assert main(common + ["--model", str(model_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failures"]["num_failed"] == 1 and metrics["failures"]["failed"][0]["id"] == "11#1"
    m = metrics["metrics"]
    assert (m["num_yes"], m["num_no"], m["num_not_judged"]) == (1, 1, 0)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["score"] == pytest.approx(2.0)  # the failed video counts as no / 0
    assert m["accuracy_judged"] == 0.5 and m["score_judged"] == 3.0
    assert len(server.requests) == 2
    judgements = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    assert sorted(j["id"] for j in judgements) == ["10", "11"] and FAKE_KEY not in (out / "metrics.json").read_text()

    # Re-scoring with the saved answers and verdicts makes no request and gives the same numbers.
    again = tmp_path / "again"
    main(common + ["--out", str(again), "--predictions", str(out / "predictions.jsonl"), "--judgements", str(out / "judgements.jsonl")])
    assert json.loads((again / "metrics.json").read_text())["metrics"] == m and len(server.requests) == 2


def test_end_to_end_counts_failed_judgements(tmp_path, small_world, model_dir, serve, monkeypatch):
    server = serve(lambda body, n: (200, "cannot tell", {}) if "Correct answer: red" in body["messages"][-1]["content"] else _verdicts(body, n))
    monkeypatch.setenv("STREAMMIND_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("STREAMMIND_JUDGE_MODEL", "fake-judge")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = data_root(tmp_path, "msvd_qa", {"videos/clipOne.mp4": world_video(small_world, 0),
                                          "videos/clipTwo.mp4": world_video(small_world, 1)})
    main(["--dataset", "msvd", "--model", str(model_dir), "--data-root", str(root), "--out", str(tmp_path / "out"),
          "--num-frames", "2", "--max-new-tokens", "2", "--judge-attempts", "2", "--judge-backoff", "0"])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"]["num_not_judged"] == 1 and metrics["not_judged_ids"] == ["11"]
    assert metrics["metrics"]["accuracy"] == pytest.approx(1 / 3) and metrics["metrics"]["accuracy_judged"] == 1.0
    assert "Authorization" not in server.requests[0]["headers"]  # no key: no header
    judgements = {j["id"]: j for j in map(json.loads, (tmp_path / "out" / "judgements.jsonl").read_text().splitlines())}
    assert "error" in judgements["11"]


def test_missing_judge_configuration_fails_before_the_model(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("STREAMMIND_JUDGE_BASE_URL", raising=False)
    argv = ["--dataset", "msvd", "--model", str(tmp_path / "no-model"), "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert run_command("streammind eval qa_open", main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("streammind eval qa_open: error: the QA judge is not configured") and "STREAMMIND_JUDGE_BASE_URL" in err


def test_end_to_end_activitynet_without_judge(tmp_path, small_world, model_dir):
    root = data_root(tmp_path, "activitynet_qa", {"videos/v_abc.mp4": world_video(small_world, 2)})
    out = tmp_path / "out"
    main(["--dataset", "activitynet", "--model", str(model_dir), "--data-root", str(root), "--out", str(out),
          "--num-frames", "2", "--max-new-tokens", "2", "--skip-judge"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failures"]["num_failed"] == 1 and metrics["metrics"]["num_not_judged"] == 2
    assert metrics["metrics"]["accuracy"] == 0.0 and metrics["metrics"]["accuracy_judged"] is None
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
