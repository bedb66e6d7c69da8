"""The main job on the embedded default: `streammind quickstart [--out runs/quickstart]`.

On 2 CPU cores, in minutes, with nothing downloaded:
1. generate the synthetic streaming world (real mp4 videos + canonical annotations) and its
   tokenizer (`streammind.synthetic.world`);
2. pretrain the tiny vision tower CLIP-style on the world's frames
   (`streammind.synthetic.tower_pretrain`; the stand-in for the pretrained CLIP the real
   preset starts from);
3. train stage 1 (language) and stage 2 (gate) of the tiny preset on the frozen tower (the
   shipped `configs/tiny/*.yaml`, through `streammind train`, exactly as a user would run
   them);
4. evaluate the held-out test split with the real streaming runtime (the free-running
   protocol, `streammind.evaluation.free_running`), writing predictions, metrics, a table and
   timeline plots;
5. stream one test video, printing each reply with its timestamp as it happens;
6. write `<out>/test_metrics.json` with trigger_acc, timval, trigger_f1_1s,
   reply_exact_match, num_videos (and the wall time of each step).

Everything is written under the current directory (`runs/world`, `runs/quickstart`) unless
`--world` / `--out` say otherwise. The stage configs are read from the installed package
(`streammind.configs`, the repository's configs/ folder) unless `--configs` names a folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import logging
import time
from pathlib import Path

from ..errors import ArgumentParser, run_command
from ..fileio import write_json


def _fmt(t: float) -> str:
    return f"{int(t // 60):02d}:{t % 60:04.1f}"


def tiny_configs():
    """The tiny preset's stage configs shipped with the package (`streammind.configs`, the repository's configs/tiny)."""
    return importlib.resources.files("streammind.configs") / "tiny"


def main(argv: list[str] | None = None) -> int:
    """`streammind quickstart`: the main job; returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict:
    """Run the main job (module docstring); returns what it writes to `<out>/test_metrics.json`."""
    parser = ArgumentParser(prog="streammind quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="Run directory (checkpoints, metrics, plots).")
    parser.add_argument("--world", default="runs/world", help="Where the synthetic world is generated (reused if unchanged).")
    parser.add_argument("--configs", default=None,
                        help="Directory with stage1.yaml and stage2.yaml (default: the tiny configs shipped with the package).")
    parser.add_argument("--seed", type=int, default=0, help="World and training seed.")
    parser.add_argument("--stage1-epochs", type=float, default=None, help="Override stage-1 epochs (default: the YAML's).")
    parser.add_argument("--stage2-epochs", type=float, default=None, help="Override stage-2 epochs (default: the YAML's).")
    parser.add_argument("--num-train", type=int, default=None, help="Override the number of training videos (default: the world's).")
    parser.add_argument("--num-test", type=int, default=None, help="Override the number of test videos (default: the world's).")
    parser.add_argument("--tower-steps", type=int, default=400, help="Optimiser steps of the tower pretraining.")
    parser.add_argument("--move-queries", action="store_true", help="Also ask about moves (a harder world, see streammind.synthetic.world).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        configs = Path(args.configs) if args.configs else stack.enter_context(importlib.resources.as_file(tiny_configs()))
        return _main_job(args, configs)


def _main_job(args: argparse.Namespace, configs: Path) -> dict:
    """Steps 1-6 of the module docstring."""
    from ..builder import load_model
    from ..evaluation.free_running import run_free_running, stream_record
    from ..streaming import StreamingSession
    from ..synthetic.tower_pretrain import pretrain_tower
    from ..synthetic.world import WorldConfig, build_tokenizer, generate_world
    from ..training.annotations import load_annotations
    from ..training.train import train

    out, world = Path(args.out), Path(args.world)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    print(f"[1/5] synthetic world -> {world}")
    overrides = {k: v for k, v in (("num_train", args.num_train), ("num_test", args.num_test)) if v is not None}
    overrides["move_queries"] = args.move_queries
    summary = generate_world(world, WorldConfig(seed=args.seed, **overrides), progress=True)
    print(f"      {summary['splits']}")
    if not (world / "tokenizer" / "tokenizer.json").exists():
        build_tokenizer(world / "tokenizer")
    timings["world_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    print("[2/5] vision tower: CLIP-style pretraining on the world's frames")
    tower = pretrain_tower(world, out / "tower", steps=args.tower_steps, seed=args.seed, progress=True)
    print(f"      held-out scene accuracy {tower['val_scene_acc']:.3f} (shape {tower['val_shape_acc']:.3f}, colour {tower['val_colour_acc']:.3f})")
    timings["tower_s"] = time.perf_counter() - t

    common = ["--train_annotations", str(world / "train.jsonl"), "--data_root", str(world), "--seed", str(args.seed),
              "--feature_cache_dir", str(out / "feature_cache")]
    t = time.perf_counter()
    print("[3/5] stage 1 (language): EPFE + LLM on the frozen tower")
    stage1 = ["--output_dir", str(out / "stage1"), "--tokenizer_path", str(world / "tokenizer"), "--clip_path", str(out / "tower")]
    stage1 += ["--num_train_epochs", str(args.stage1_epochs)] if args.stage1_epochs else []
    train([str(configs / "stage1.yaml"), *common, *stage1])
    timings["stage1_s"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[4/5] stage 2 (gate)")
    stage2 = ["--output_dir", str(out / "stage2"), "--init_from", str(out / "stage1")]
    stage2 += ["--num_train_epochs", str(args.stage2_epochs)] if args.stage2_epochs else []
    train([str(configs / "stage2.yaml"), *common, *stage2])
    timings["stage2_s"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[5/5] evaluating the test split with the streaming runtime")
    model, processor = load_model(out / "stage2")
    records = load_annotations(world / "test.jsonl")
    metrics = run_free_running(model, processor, records, world, out / "eval_test")
    timings["eval_s"] = time.perf_counter() - t

    demo = records[0]
    print(f"\nstreaming {demo.video}  query: {demo.query!r}")
    session = StreamingSession(model, processor)
    stream_record(session, demo, world, model.config.frames_per_second, on_reply=lambda r: print(f"  [{_fmt(r['time'])}] {r['text']}", flush=True))
    print("  ground truth: " + "; ".join(f"[{_fmt(tt.time)}] {tt.text}" for tt in demo.turns))

    timings["total_s"] = time.perf_counter() - t0
    result = {**metrics["headline"], "timings": {k: round(v, 1) for k, v in timings.items()},
              "details": str(out / "eval_test" / "metrics.json")}
    write_json(out / "test_metrics.json", result)
    h = metrics["headline"]
    shown = {k: "n/a" if h[k] is None else f"{h[k]:.3f}" for k in ("trigger_acc", "timval", "trigger_f1_1s", "reply_exact_match")}
    print(f"\ntest split ({h['num_videos']} videos): trigger_acc {shown['trigger_acc']}  timval {shown['timval']}  "
          f"F1@1s {shown['trigger_f1_1s']}  reply exact match {shown['reply_exact_match']}")
    print(f"wrote {out / 'test_metrics.json'} in {timings['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    raise SystemExit(run_command("streammind quickstart", main))
