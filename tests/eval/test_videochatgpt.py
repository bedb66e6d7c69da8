"""The Video-ChatGPT generative benchmark: the score parser, the prompts, the pure summary, the
loader on schema-exact fixtures, and end-to-end runs with a tiny model and a fake judge on
loopback whose scores are fixed in advance (expected averages worked out by hand below).

Run: .venv/bin/python -m pytest tests/eval/test_videochatgpt.py -q
"""

import json
import shutil

import pytest

from streammind.evaluation.judge import JudgeResponseError
from streammind_eval.videochatgpt import judge_messages, load_benchmark, load_verdicts, main, parse_score, summarise
from tests.fake_judge import EXPECTED, FAKE_KEY, SCORES, FakeServer, fake_verdict
from tests.helpers import OFFLINE_FIXTURES as FIXTURES
from tests.helpers import data_root, save_tiny_model, world_video

# ---- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("4", 4), (" 0 ", 0), ("5.", 5), ("Score: 3", 3), ("score = 2", 2), ("```\n1\n```", 1), ("4.0", 4),
     ("{'score': 4}", 4), ('{"Score": "2"}', 2), ('Here you go: {"score": 5}', 5), ("{'score': 3.0}", 3)],
)
def test_parse_score_accepts(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize(
    "reply",
    ["", "four", "4.5", "7", "-1", "{'score': 4.8}", "{'rating': 4}", "The score is 4", "4/5", "3 or 4", '{"score": true}'],
)
def test_parse_score_refuses(reply):
    with pytest.raises(JudgeResponseError):
        parse_score(reply)


def test_judge_messages_ask_for_the_score_only():
    example = {"question": "Q?", "reference": "R."}
    system, user = judge_messages("temporal_understanding", example, "P.")
    assert system["role"] == "system" and "order" in system["content"]
    assert user["content"].startswith("Question: Q?\nCorrect answer: R.\nPredicted answer: P.\n")
    assert user["content"].endswith("Reply with the score only: one integer from 0 to 5 and nothing else.")
    pair = {"questions": ["First?", "Second?"], "reference": "R."}
    _, user = judge_messages("consistency", pair, ["P1.", "P2."])
    assert "Question 1: First?\nQuestion 2: Second?\nCorrect answer (to both): R.\n" in user["content"]
    assert "Predicted answer to question 1: P1.\nPredicted answer to question 2: P2.\n" in user["content"]
    with pytest.raises(ValueError):
        judge_messages("fluency", example, "P.")


def test_summarise_by_hand():
    scores = [
        {"id": "g1", "part": "generic", "scores": {"correctness": 4, "detail_orientation": 2, "contextual_understanding": 5}, "failed": {}},
        {"id": "g2", "part": "generic", "scores": {"correctness": None, "detail_orientation": 3, "contextual_understanding": None},
         "failed": {"correctness": "unparsed", "contextual_understanding": "judge_error"}},
        {"id": "t1", "part": "temporal", "scores": {"temporal_understanding": 1}, "failed": {}},
        {"id": "c1", "part": "consistency", "scores": {"consistency": 5}, "failed": {}},
    ]
    # generic has 2 questions, temporal 2 (one never answered: a failed video), consistency 1.
    out = summarise(scores=scores, num_questions={"generic": 2, "temporal": 2, "consistency": 1})
    m = out["metrics"]
    assert (m["correctness"], m["correctness_judged"]) == (2.0, 4.0)  # 4 / 2 questions; 4 / 1 judged
    assert (m["detail_orientation"], m["detail_orientation_judged"]) == (2.5, 2.5)
    assert (m["contextual_understanding"], m["contextual_understanding_judged"]) == (2.5, 5.0)
    assert (m["temporal_understanding"], m["temporal_understanding_judged"]) == (0.5, 1.0)
    assert (m["consistency"], m["consistency_judged"]) == (5.0, 5.0)
    assert m["average"] == pytest.approx((2.0 + 2.5 + 2.5 + 0.5 + 5.0) / 5)
    assert m["average_judged"] == pytest.approx((4.0 + 2.5 + 5.0 + 1.0 + 5.0) / 5)
    assert out["unparsed_ids"]["correctness"] == ["g2"] and out["judge_error_ids"]["contextual_understanding"] == ["g2"]
    assert out["counts"]["temporal_understanding"] == {"questions": 2, "judged": 1, "unparsed": 0, "judge_errors": 0,
                                                       "not_judged": 0, "not_answered": 1}
    # A part with no questions has no score, so no average either.
    partial = summarise(scores=scores[:2], num_questions={"generic": 2})["metrics"]
    assert partial["temporal_understanding"] is None and partial["average"] is None and partial["correctness"] == 2.0


# ---- data ------------------------------------------------------------------------------


def test_loader_reads_the_three_files(tmp_path):
    (tmp_path / "v_beta.mkv").write_bytes(b"x")
    (tmp_path / "v_delta.mp4").write_bytes(b"x")
    examples = load_benchmark(FIXTURES / "videochatgpt", tmp_path)
    assert [e["id"] for e in examples] == ["generic/v_alpha", "generic/v_beta", "generic/v_alpha#1", "temporal/v_alpha",
                                           "temporal/v_gamma", "consistency/v_beta", "consistency/v_alpha"]
    assert examples[0]["question"] == "What happens in the video?" and examples[0]["reference"] == "A red circle appears, then a blue square."
    assert examples[1]["video"].endswith("v_beta.mkv") and examples[0]["video"].endswith("v_alpha.mp4")  # missing: counted later
    assert examples[5]["questions"] == ["Which way does the triangle move?", "In what direction is the triangle moving?"]
    assert examples[5]["reference"] == "To the left." and "question" not in examples[5]
    assert [e["id"] for e in load_benchmark(FIXTURES / "videochatgpt", tmp_path, ["temporal"])] == ["temporal/v_alpha", "temporal/v_gamma"]
    (tmp_path / "generic_qa.json").write_text(json.dumps([{"video_name": "delta", "Q": "q", "A": "a"}]))
    assert load_benchmark(tmp_path, tmp_path, ["generic"])[0]["video"].endswith("v_delta.mp4")  # v_<name> is tried too
    with pytest.raises(ValueError, match="unknown parts"):
        load_benchmark(FIXTURES / "videochatgpt", tmp_path, ["captions"])


# ---- end to end ------------------------------------------------------------------------

# The fake judge's scores, by the score asked for (read from the system prompt) and the correct answer.


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(respond):
        servers.append(FakeServer(respond))
        monkeypatch.setenv("STREAMMIND_JUDGE_BASE_URL", servers[-1].url)
        monkeypatch.setenv("STREAMMIND_JUDGE_MODEL", "fake-judge")
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("videochatgpt_model"), tiny_tokenizer_dir)


def vcgpt_root(tmp_path, small_world):
    """The fixture layout with v_alpha and v_beta as world videos (v_gamma stays missing)."""
    return data_root(tmp_path, "videochatgpt", {"Test_Videos/v_alpha.mp4": world_video(small_world, 0),
                                                "Test_Videos/v_beta.mp4": world_video(small_world, 1)})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_with_the_fake_judge_and_rescoring(tmp_path, small_world, model_dir, judge_server):
    server = judge_server(lambda body, n: fake_verdict(body))
    root = vcgpt_root(tmp_path, small_world)
    out = tmp_path / "out"
    common = ["--data-root", str(root), "--num-frames", "2", "--max-new-tokens", "3", "--judge-attempts", "2", "--judge-backoff", "0"]
    assert main(common + ["--model", str(model_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"] == pytest.approx(EXPECTED)
    assert metrics["failures"]["failed"] == [{"id": "temporal/v_gamma", "reason": "missing_video",
                                              "message": metrics["failures"]["failed"][0]["message"]}]
    assert metrics["unparsed_ids"]["correctness"] == ["generic/v_alpha#1"] and metrics["counts"]["correctness"]["unparsed"] == 1
    assert metrics["counts"]["temporal_understanding"]["not_answered"] == 1
    # 9 generic verdicts (the unparsed one asked twice: 10 requests), 1 temporal, 2 consistency.
    assert len(server.requests) == 13
    assert all(r["body"]["temperature"] == 0.0 and r["body"]["model"] == "fake-judge" for r in server.requests)

    # Consistency: both answers of a record go to the judge in one request, with both questions.
    predictions = {p["id"]: p for p in _lines(out / "predictions.jsonl")}
    pair = predictions["consistency/v_beta"]["prediction"]
    assert isinstance(pair, list) and len(pair) == 2
    request = next(r["body"]["messages"][-1]["content"] for r in server.requests
                   if "Correct answer (to both): To the left." in r["body"]["messages"][-1]["content"])
    assert (f"Question 1: Which way does the triangle move?\nQuestion 2: In what direction is the triangle moving?\n"
            f"Correct answer (to both): To the left.\nPredicted answer to question 1: {pair[0]}\n"
            f"Predicted answer to question 2: {pair[1]}\n") in request

    verdicts = load_verdicts(out / "judgements.jsonl")
    assert len(verdicts) == 9 + 1 + 2
    assert verdicts[("generic/v_alpha", "detail_orientation")]["score"] == 3
    assert verdicts[("generic/v_alpha#1", "correctness")]["reason"] == "unparsed"
    assert verdicts[("generic/v_alpha#1", "correctness")]["reply"] == "I cannot tell from this."
    assert FAKE_KEY not in (out / "metrics.json").read_text() + (out / "judgements.jsonl").read_text()

    # Re-scoring without a model and without a judge: the same numbers from the saved verdicts.
    saved = ["--predictions", str(out / "predictions.jsonl"), "--judgements", str(out / "judgements.jsonl")]
    quiet = tmp_path / "quiet"
    assert main(common + ["--out", str(quiet), "--skip-judge"] + saved) == 0
    again = json.loads((quiet / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"] and again["counts"] == metrics["counts"] and len(server.requests) == 13

    # Re-scoring with the judge asks again only for the failed verdict, which now gets a 3:
    # correctness (4 + 2 + 3) / 3 = 3.0, average (3 + 3 + 4 + 1 + 3) / 5 = 2.8.
    fixed = dict(SCORES) | {("correctness", "Red."): "3"}
    server.respond = lambda body, n: fake_verdict(body, fixed)
    rejudged = tmp_path / "rejudged"
    assert main(common + ["--out", str(rejudged)] + saved) == 0
    assert len(server.requests) == 14
    m = json.loads((rejudged / "metrics.json").read_text())["metrics"]
    assert (m["correctness"], m["correctness_judged"], m["average"]) == pytest.approx((3.0, 3.0, 2.8))


def test_judge_errors_are_counted_apart_from_unparsed_replies(tmp_path, small_world, model_dir, judge_server):
    def respond(body, n):
        if "Correct answer (to both): Two." in body["messages"][-1]["content"]:
            return 500, "down", {}
        return fake_verdict(body)

    judge_server(respond)
    root = vcgpt_root(tmp_path, small_world)
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--data-root", str(root), "--out", str(out), "--parts", "consistency",
                 "--num-frames", "2", "--max-new-tokens", "2", "--judge-attempts", "2", "--judge-backoff", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge_error_ids"]["consistency"] == ["consistency/v_alpha"] and metrics["unparsed_ids"]["consistency"] == []
    assert (metrics["metrics"]["consistency"], metrics["metrics"]["consistency_judged"]) == (2.5, 5.0)  # (5 + 0) / 2; 5 / 1
    assert metrics["metrics"]["average"] is None  # only one part was evaluated


def test_without_a_judge_answers_are_written_and_nothing_is_scored(tmp_path, small_world, model_dir, monkeypatch):
    monkeypatch.delenv("STREAMMIND_JUDGE_BASE_URL", raising=False)
    root = vcgpt_root(tmp_path, small_world)
    shutil.rmtree(root / "Test_Videos")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:  # no judge configured and no --skip-judge: stop before the model
        main(["--model", str(tmp_path / "no-model"), "--data-root", str(root), "--out", str(out)])
    assert exit_.value.code == 2
    assert main(["--model", str(model_dir), "--data-root", str(root), "--out", str(out), "--skip-judge", "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failures"]["by_reason"] == {"missing_video": 3}
    assert metrics["metrics"]["correctness"] == 0.0 and metrics["metrics"]["correctness_judged"] is None
    assert metrics["metrics"]["temporal_understanding"] is None  # --limit 3 keeps the generic questions only
