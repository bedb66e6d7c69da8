"""The offline suite: every offline benchmark the data root holds, one model, one summary table.

    streammind eval offline --data-root data/eval --model runs/stage1 --out runs/eval/offline \\
        [--only coin mvbench ...] [--device cuda --dtype bfloat16] [--limit N] [--num-frames N] [--skip-judge]
    (the same as `scripts/eval/offline.sh ...`, and `python -m eval.offline_suite ...` in a checkout)

Detection. Each benchmark has one folder under --data-root, named as in StreamMind's release
where it has one; inside it, the layout its own module documents (`streammind eval <module>
--help`). A benchmark is run when its folder holds the files below, and otherwise reported as
"skipped (not found: <the first path checked that is missing>)", never as a zero:

    benchmark        folder under --data-root      required (what decides "present")
    coin             coin/                         COIN.json (or coin.json); videos/ beside it
    ego4d_lta        ego4d/                        annotations/fho_lta_taxonomy.json and
                                                   annotations/fho_lta_val.json; videos in
                                                   v2/full_scale/ (or v2/clips/ when only it exists)
    msvd_qa          MSVD_Zero_Shot_QA/            test_qa.json; videos/
    activitynet_qa   Activitynet_Zero_Shot_QA/     test_q.json and test_a.json; videos/ or all_test/
    mvbench          mvbench/                      json/<task>.json (the tasks present are run); video/
    videomme         videomme/                     videomme.json or videomme.jsonl (the released
                                                   parquet converted, see eval/qa_mc.py); data/ or videos/
    egoschema        egoschema/                    questions.json (+ subset_answers.json to score);
                                                   videos/ or good_clips_git/
    perceptiontest   perception_test_mcqa/         mc_question_valid.json, else mc_question_test.json; videos/
    videochatgpt     videochatgpt_gen/             generic_qa.json, temporal_qa.json, consistency_qa.json;
                                                   Test_Videos/

Running. The model is loaded once and shared; each present benchmark runs through its module's
`main` with --model, --device, --dtype and, when given, --limit, --num-frames, --fps,
--max-new-tokens (otherwise each benchmark's own defaults), writing its usual outputs into
<out>/<benchmark>/. A benchmark that raises is reported as "failed" with its one-line error
(the traceback goes to the log) and the suite goes on; the exit status is 1 when any failed.

The judge. MSVD-QA, ActivityNet-QA and Video-ChatGPT need the LLM judge, configured only by
environment variables (STREAMMIND_JUDGE_BASE_URL, STREAMMIND_JUDGE_MODEL, OPENAI_API_KEY; see
eval/qa_open.py). Without them (or with --skip-judge) these benchmarks still answer every
question, so the model's work is not lost, and are reported as "answered, not judged" with no
score; judge them later with their module's --predictions (no model needed).

Summary: <out>/summary.json (one record per benchmark: status, reason, main metric values,
examples, failed, output folder) and <out>/summary.md (one table row per benchmark). Main
metrics: COIN accuracy % of step / next / task / procedure / procedure+; Ego4D LTA ED@20 of
verbs / nouns / actions (lower is better); MSVD-QA and ActivityNet-QA judge accuracy and mean
score 0-5; MVBench, Video-MME, EgoSchema, PerceptionTest accuracy; Video-ChatGPT its five scores
0-5 and their average. Failed videos count as wrong (or 0) in these, as in each module.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.judge import JudgeConfig, JudgeConfigError
from streammind.evaluation.tasks import load_model_from_args, reuse_loaded_models, setup_logging, write_json
from streammind.fileio import write_text

from .qa_mc import MVBENCH_TASKS

logger = logging.getLogger(__name__)

MVBENCH_STEMS = tuple(spec[0][: -len(".json")] for spec in MVBENCH_TASKS.values())


class NotFound(Exception):
    """A benchmark's data is absent; `path` is the first path checked that is missing."""

    def __init__(self, path: Path, hint: str = ""):
        super().__init__(str(path))
        self.path, self.hint = path, hint


def _require(*paths: Path) -> Path:
    """The first existing path of `paths`; NotFound naming the first one when none exists."""
    for path in paths:
        if path.exists():
            return path
    raise NotFound(paths[0])


# ---- detection: folder -> the benchmark-specific arguments (pure file-system checks) ---


def _coin(folder: Path) -> list[str]:
    return ["--annotations", str(_require(folder / "COIN.json", folder / "coin.json"))]


def _ego4d_lta(folder: Path) -> list[str]:
    _require(folder / "annotations" / "fho_lta_taxonomy.json")
    _require(folder / "annotations" / "fho_lta_val.json")
    clips_only = not (folder / "v2" / "full_scale").is_dir() and (folder / "v2" / "clips").is_dir()
    return ["--split", "val", "--video-source", "clips" if clips_only else "full_scale"]


def _msvd(folder: Path) -> list[str]:
    _require(folder / "test_qa.json")
    return ["--dataset", "msvd"]


def _activitynet(folder: Path) -> list[str]:
    _require(folder / "test_q.json")
    _require(folder / "test_a.json")
    return ["--dataset", "activitynet"]


def _mvbench(folder: Path) -> list[str]:
    present = [stem for stem in MVBENCH_STEMS if (folder / "json" / f"{stem}.json").is_file()]
    if not present:
        raise NotFound(_require(folder / "json") / f"{MVBENCH_STEMS[0]}.json", "no MVBench task file in json/")
    return ["--dataset", "mvbench", "--tasks", *present]


def _videomme(folder: Path) -> list[str]:
    try:
        _require(folder / "videomme.json", folder / "videomme.jsonl")
    except NotFound as missing:
        if _require(folder).is_dir() and any(folder.glob("*.parquet")):
            missing.hint = "convert the parquet to videomme.json first (see eval/qa_mc.py)"
        raise
    return ["--dataset", "videomme"]


def _egoschema(folder: Path) -> list[str]:
    _require(folder / "questions.json")
    return ["--dataset", "egoschema"]


def _perceptiontest(folder: Path) -> list[str]:
    path = _require(folder / "mc_question_valid.json", folder / "mc_question_test.json")
    return ["--dataset", "perceptiontest", "--split", path.stem[len("mc_question_"):]]


def _videochatgpt(folder: Path) -> list[str]:
    for name in ("generic_qa.json", "temporal_qa.json", "consistency_qa.json"):
        _require(folder / name)
    return []


# ---- main metrics: a benchmark's metrics.json -> {label: value} ----------------------


def _coin_values(metrics: Mapping) -> dict:
    names = {"step": "step", "next": "next", "task": "task", "procedure": "procedure", "taskprocedure": "procedure+"}
    return {label: metrics[key]["accuracy"] for key, label in names.items() if key in metrics}


def _coin_counts(metrics: Mapping) -> tuple[int, int]:
    return sum(m["num_examples"] for m in metrics.values()), sum(m["num_failed"] for m in metrics.values())


def _lta_values(metrics: Mapping) -> dict:
    m = metrics["metrics"]
    return {kind: m.get(f"{kind}_ED@20") for kind in ("verb", "noun", "action")} if "note" not in m else {}


def _qa_open_values(metrics: Mapping) -> dict:
    return {"accuracy": metrics["metrics"]["accuracy"], "score": metrics["metrics"]["score"]}


def _qa_mc_values(metrics: Mapping) -> dict:
    return {"accuracy": metrics["metrics"]["accuracy"]}


def _videochatgpt_values(metrics: Mapping) -> dict:
    m = metrics["metrics"]
    labels = {"correctness": "correctness", "detail_orientation": "detail", "contextual_understanding": "context",
              "temporal_understanding": "temporal", "consistency": "consistency", "average": "average"}
    return {label: m[key] for key, label in labels.items()}


def _failure_counts(metrics: Mapping) -> tuple[int, int]:
    return metrics["failures"]["num_examples"], metrics["failures"]["num_failed"]


@dataclass(frozen=True)
class Benchmark:
    """One offline benchmark of the suite."""

    name: str
    title: str
    folder: str
    module: str
    metric: str
    detect: Callable[[Path], list[str]]
    values: Callable[[Mapping], dict]
    counts: Callable[[Mapping], tuple[int, int]] = _failure_counts
    judged: bool = False


BENCHMARKS = (
    Benchmark("coin", "COIN", "coin", "coin", "accuracy %", _coin, _coin_values, _coin_counts),
    Benchmark("ego4d_lta", "Ego4D LTA", "ego4d", "ego4d_lta", "ED@20, lower is better", _ego4d_lta, _lta_values),
    Benchmark("msvd_qa", "MSVD-QA", "MSVD_Zero_Shot_QA", "qa_open", "judge accuracy, score 0-5", _msvd, _qa_open_values,
              judged=True),
    Benchmark("activitynet_qa", "ActivityNet-QA", "Activitynet_Zero_Shot_QA", "qa_open", "judge accuracy, score 0-5",
              _activitynet, _qa_open_values, judged=True),
    Benchmark("mvbench", "MVBench", "mvbench", "qa_mc", "accuracy", _mvbench, _qa_mc_values),
    Benchmark("videomme", "Video-MME", "videomme", "qa_mc", "accuracy", _videomme, _qa_mc_values),
    Benchmark("egoschema", "EgoSchema", "egoschema", "qa_mc", "accuracy", _egoschema, _qa_mc_values),
    Benchmark("perceptiontest", "PerceptionTest", "perception_test_mcqa", "qa_mc", "accuracy", _perceptiontest,
              _qa_mc_values),
    Benchmark("videochatgpt", "Video-ChatGPT", "videochatgpt_gen", "videochatgpt", "judge score 0-5", _videochatgpt,
              _videochatgpt_values, judged=True),
)
NAMES = tuple(b.name for b in BENCHMARKS)


# ---- running --------------------------------------------------------------------------


class _Tail:
    """A stderr that passes everything through and keeps the last few thousand characters."""

    def __init__(self, stream, keep: int = 4000):
        self.stream, self.keep, self.text = stream, keep, ""

    def write(self, text: str) -> int:
        self.text = (self.text + text)[-self.keep :]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class BenchmarkFailed(Exception):
    """A benchmark's command exited with an error; the message is its last error line."""


def _run_main(module_name: str, argv: list[str]) -> None:
    """Run the benchmark module's `main(argv)` under the commands' error convention; a non-zero exit
    status (a reported error, or SystemExit) raises BenchmarkFailed with the command's last error line."""
    tail = _Tail(sys.stderr)
    try:
        with contextlib.redirect_stderr(tail):
            module = importlib.import_module(f".{module_name}", __package__)
            status = run_command(f"streammind eval {module_name}", module.main, argv)
    except SystemExit as exit_:  # argparse's --help and version actions exit 0
        status = exit_.code
    if status in (0, None):
        return
    lines = [line for line in tail.text.splitlines() if line.strip()]
    raise BenchmarkFailed(_one_line(lines[-1]) if lines else f"exited with status {status}")


def run_benchmark(benchmark: Benchmark, data_root: Path, out: Path, common: list[str], *, judge: bool) -> dict:
    """Detect, run and summarise one benchmark; never raises for the benchmark's own failures."""
    folder = data_root / benchmark.folder
    record = {"name": benchmark.name, "title": benchmark.title, "data": str(folder), "metric": benchmark.metric,
              "status": None, "reason": None, "values": {}, "num_examples": None, "num_failed": None, "out": None}
    try:
        extra = benchmark.detect(folder)
    except NotFound as missing:
        reason = f"not found: {missing.path}" + (f"; {missing.hint}" if missing.hint else "")
        return record | {"status": "skipped", "reason": reason}
    bench_out = out / benchmark.name
    argv = extra + ["--data-root", str(folder), "--out", str(bench_out)] + common
    if benchmark.judged and not judge:
        argv.append("--skip-judge")
    logger.info("%s: running %s %s", benchmark.name, benchmark.module, " ".join(argv))
    try:
        _run_main(benchmark.module, argv)
        metrics = json.loads((bench_out / "metrics.json").read_text(encoding="utf-8"))
        values = benchmark.values(metrics)
        num_examples, num_failed = benchmark.counts(metrics)
    except BenchmarkFailed as error:  # a reported error: its one line says it all
        logger.error("%s failed: %s", benchmark.name, error)
        return record | {"status": "failed", "reason": _one_line(str(error)), "out": str(bench_out)}
    except Exception as error:  # any other failure of one benchmark is reported and the suite goes on
        logger.error("%s failed", benchmark.name, exc_info=True)
        return record | {"status": "failed", "reason": _one_line(f"{type(error).__name__}: {error}"), "out": str(bench_out)}
    record |= {"values": values, "num_examples": num_examples, "num_failed": num_failed, "out": str(bench_out)}
    if benchmark.judged and not judge:
        return record | {"status": "answered, not judged", "values": {},
                         "reason": f"no judge configured: judge later with streammind eval {benchmark.module} --predictions"}
    note = metrics.get("metrics", {}).get("note") if isinstance(metrics.get("metrics"), Mapping) else None
    return record | {"status": "ok", "reason": note}


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def render_markdown(summary: Mapping) -> str:
    """The summary as a markdown table, one row per benchmark."""
    judge = summary["judge"] or "not configured"
    lines = [
        "# Offline suite", "",
        f"Data root `{summary['data_root']}`, model `{summary['model']}`, judge: {judge}.", "",
        "| benchmark | status | main metric | values | examples | failed |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["benchmarks"]:
        status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        values = " · ".join(f"{k} {_number(v)}" for k, v in r["values"].items()) or "—"
        examples = "—" if r["num_examples"] is None else str(r["num_examples"])
        failed = "—" if r["num_failed"] is None else str(r["num_failed"])
        cells = [r["title"], status, r["metric"], values, examples, failed]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _judge_description() -> str | None:
    """"<model> at <base url>" when the judge is configured in the environment, else None."""
    try:
        config = JudgeConfig.from_env()
    except JudgeConfigError:
        return None
    return f"{config.model} at {config.base_url}"


def run_suite(args: argparse.Namespace) -> dict:
    """Run the selected benchmarks (see the module docstring); returns the summary written to --out."""
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    judge = None if args.skip_judge else _judge_description()
    common = ["--model", str(args.model), "--dtype", args.dtype]
    if args.device:
        common += ["--device", args.device]
    if args.allow_partial_load:
        common.append("--allow-partial-load")
    for flag, value in (("--limit", args.limit), ("--num-frames", args.num_frames), ("--fps", args.fps),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None:
            common += [flag, str(value)]
    records = []
    with reuse_loaded_models():
        if any(_present(b, args.data_root) for b in selected):
            load_model_from_args(args)  # once, before any benchmark; a bad model stops here
        for benchmark in selected:
            records.append(run_benchmark(benchmark, args.data_root, args.out, common, judge=judge is not None))
    summary = {"data_root": str(args.data_root), "model": str(args.model), "judge": judge, "benchmarks": records}
    write_json(summary, args.out / "summary.json")
    write_text(args.out / "summary.md", render_markdown(summary))
    return summary


def _present(benchmark: Benchmark, data_root: Path) -> bool:
    try:
        benchmark.detect(data_root / benchmark.folder)
    except NotFound:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streammind eval offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, type=Path, help="folder holding one subfolder per benchmark (table above)")
    parser.add_argument("--model", required=True, help="saved StreamMind directory (config, weights, tokenizer)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: <benchmark>/ outputs, summary.json, summary.md")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=None, help="run only these benchmarks")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each benchmark")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: each benchmark's)")
    parser.add_argument("--fps", type=float, default=None, help="fixed-rate frame grid instead of uniform sampling")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="decoding cap (default: each benchmark's)")
    parser.add_argument("--skip-judge", action="store_true", help="answer the judged benchmarks without judging them")
    parser.add_argument("--allow-partial-load", action="store_true",
                        help="load a model whose weights lack some tensors (or hold extra ones); by default that is an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the offline suite; 0 when no benchmark failed, 1 otherwise (or when the model does not load)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        summary = run_suite(args)
    except Exception as error:  # the model or the output folder: one line (the traceback at debug level)
        logger.debug("offline suite failed", exc_info=True)
        print(f"streammind eval offline: error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(render_markdown(summary), end="")
    logger.info("wrote %s and %s", args.out / "summary.md", args.out / "summary.json")
    return 1 if any(r["status"] == "failed" for r in summary["benchmarks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
