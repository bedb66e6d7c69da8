"""Make the committed assets: the test clip and the README's figures.

    .venv/bin/python scripts/make_assets.py clip       # assets/shapes_596x336_23.976fps.mp4
    .venv/bin/python scripts/make_assets.py figures    # assets/timeline.png, assets/benchmark_h200.png

`clip` encodes a procedural clip of our own (licence: the project's, Apache-2.0): 146 frames
at 24000/1001 fps (6.09 s) of 596 x 336 pixels, H.264 (yuv420p) in MP4 with a 1/24000 time
base, so frame k is shown from k * 1001 / 24000 s. The size is not a multiple of 16 and the
rate is NTSC film's, the awkward cases of real footage; a circle moves across a shifting
gradient, a square changes colour at 2.5 s and a triangle appears at 4 s. The real-clip tests
(tests/media/test_video.py, tests/apps/test_cli.py, the notebook test) decode it.

`figures` draws the README's figures: the gate timeline of the first test video of the main
job (`scripts/quickstart.sh` must have run: runs/quickstart/eval_test/predictions.jsonl and
runs/world/test.jsonl; `--run`, `--world` point elsewhere) and the H.200 benchmark chart from
docs/benchmarks/h200.json.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
CLIP_NAME = "shapes_596x336_23.976fps.mp4"
WIDTH, HEIGHT, FRAMES = 596, 336, 146
RATE = Fraction(24000, 1001)


def clip_frame(k: int) -> np.ndarray:
    """Frame k of the clip: uint8 [HEIGHT, WIDTH, 3] RGB."""
    t = k / float(RATE)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frame = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    frame[..., 0] = 40 + 60 * (x / WIDTH)  # a gradient that drifts slowly
    frame[..., 1] = 60 + 50 * (y / HEIGHT) + 20 * np.sin(2 * np.pi * (x / WIDTH + 0.1 * t))
    frame[..., 2] = 90 + 40 * ((x + y) / (WIDTH + HEIGHT))
    cx, cy = 60 + 80 * t, 0.35 * HEIGHT  # a red circle moving right
    frame[(x - cx) ** 2 + (y - cy) ** 2 < 40**2] = (220, 40, 40)
    square = (np.abs(x - 0.7 * WIDTH) < 45) & (np.abs(y - 0.6 * HEIGHT) < 45)
    frame[square] = (40, 80, 220) if t < 2.5 else (240, 200, 30)  # blue, then yellow
    if t >= 4.0:  # a green triangle appears
        tx, ty = 0.3 * WIDTH, 0.75 * HEIGHT
        inside = (y < ty + 40) & (y > ty - 40) & (np.abs(x - tx) < (y - (ty - 40)) * 0.6)
        frame[inside] = (40, 200, 80)
    return np.clip(frame, 0, 255).astype(np.uint8)


def make_clip(path: Path) -> Path:
    import av

    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=RATE, options={"crf": "30", "preset": "slow", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, 24000)
        for k in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(clip_frame(k), format="rgb24")
            frame.pts, frame.time_base = k * 1001, Fraction(1, 24000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_timeline(run: Path, world: Path, path: Path) -> Path:
    from streammind.evaluation.plots import plot_timeline
    from streammind.fileio import read_jsonl
    from streammind.training.annotations import load_annotations

    prediction = next(record for _, record in read_jsonl(run / "eval_test" / "predictions.jsonl"))
    reference = next(r for r in load_annotations(world / "test.jsonl") if (r.id or r.video) == prediction["id"])
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    return plot_timeline(prediction["frame_times"], prediction["frame_probs"], metrics["threshold"], [t.time for t in reference.turns],
                         [r["time"] for r in prediction["replies"]], path, title=f"{prediction['id']}: {reference.query}")


def make_benchmark_chart(results: Path, path: Path) -> Path:
    from matplotlib.figure import Figure

    bench = json.loads(results.read_text())
    ours = max(window["p50_ms"] for window in bench["live"]["windows"].values())
    per_frame = {int(k): v["p50_ms"] for k, v in bench["per_frame_llm"]["ms_per_frame_llm"].items()}
    labels = ["StreamMind\nalways-on frame"] + [f"per-frame LLM\ncontext {n // 1024}k" for n in sorted(per_frame)]
    values = [ours] + [per_frame[n] for n in sorted(per_frame)]
    streams = {int(k): v["frames_per_s"] for k, v in bench["aggregate"].items()}
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    left.bar(range(len(values)), values, color=["tab:green"] + ["tab:gray"] * (len(values) - 1))
    left.set_xticks(range(len(values)), labels, fontsize=8)
    left.set_ylabel("ms per frame (p50)")
    left.set_title("cost of one frame, 7B preset, bf16")
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    right.plot(sorted(streams), [streams[n] for n in sorted(streams)], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("streams batched")
    right.set_ylabel("frames per second")
    right.set_title("throughput of the always-on path")
    figure.suptitle(f"{bench['gpu']} ({results.relative_to(REPO)})", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["clip", "figures"])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "quickstart", help="the main job's output directory")
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "world", help="the main job's synthetic world")
    args = parser.parse_args()
    ASSETS.mkdir(exist_ok=True)
    if args.what == "clip":
        written = [make_clip(ASSETS / CLIP_NAME)]
    else:
        written = [make_timeline(args.run, args.world, ASSETS / "timeline.png"),
                   make_benchmark_chart(REPO / "docs" / "benchmarks" / "h200.json", ASSETS / "benchmark_h200.png")]
    for path in written:
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
