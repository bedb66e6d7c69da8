"""Helpers shared by the tests; fixtures live in conftest.py, helpers here.

Paths of the repository (`REPO`, `ASSETS`, the committed clip `CLIP`, the test fixtures), a
tiny random model (`make_tiny`, `save_tiny_model`) and a batch for it (`make_example`,
`batch_of_two`), data roots for the offline benchmarks
(`world_video`, `data_root`), the tiny stage configs pointed at a test world (`stage_args`),
and the adversarial suite's checks (`tree_checksums`, `one_error_line`, `SilentServer`).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from pathlib import Path

import torch

from streammind.processing import ChatTurn
from streammind.training.collator import StreamCollator

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
# Our own H.264 clip (scripts/make_assets.py): 146 frames at 24000/1001 fps, 596 x 336.
CLIP = ASSETS / "shapes_596x336_23.976fps.mp4"
CLIP_FRAMES, CLIP_WIDTH, CLIP_HEIGHT = 146, 596, 336
FIXTURES = REPO / "tests" / "fixtures"
OFFLINE_FIXTURES = FIXTURES / "offline"


def make_tiny(tokenizer, seed: int = 0, **overrides):
    """A tiny random StreamMind (eval mode) and its processor; `overrides` are StreamMindConfig fields."""
    from streammind import StreamMindConfig, build_model

    torch.manual_seed(seed)
    config = StreamMindConfig.from_preset("tiny", **overrides)
    model, processor = build_model(config, tokenizer)
    return model.eval(), processor


def save_tiny_model(directory: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A tiny random StreamMind model saved to `directory` (what --model expects)."""
    from transformers import AutoTokenizer

    from streammind import save_model

    model, processor = make_tiny(AutoTokenizer.from_pretrained(tokenizer_dir), **overrides)
    save_model(model, processor, directory)
    return directory


def make_example(processor, num_frames: int, replies: list[tuple[int, str]], query="Tell me when a shape appears.", seed=0):
    """A video of `num_frames` random frames whose turns end at the given frame indices."""
    g = torch.Generator().manual_seed(seed)
    size = processor.config.vision_config.image_size
    turns, ends, start = [], [], 0
    for i, (end, text) in enumerate(replies):
        turns.append(ChatTurn(processor.placeholders_for(end - start), user=query if i == 0 else None, reply=text))
        ends.append(end)
        start = end
    ids, labels = processor.encode_conversation(turns)
    gate = [0] * num_frames
    for end, _ in replies:
        gate[end - 1] = 1
    return dict(
        pixel_values=torch.randn(num_frames, 3, size, size, generator=g),
        input_ids=ids,
        labels=labels,
        turn_ends=ends,
        gate_labels=gate,
        gate_prompt_ids=processor.encode_gate_prompt(query),
    )


def batch_of_two(processor):
    collate = StreamCollator.from_processor(processor)
    a = make_example(processor, 9, [(4, "A red circle appeared."), (9, "The blue square disappeared.")], seed=1)
    b = make_example(processor, 5, [(3, "The square turned green.")], query="Tell me when something changes colour.", seed=2)
    return collate([a, b]), (a, b)


def world_video(small_world: Path, index: int) -> Path:
    """Test video `index` of the `small_world` fixture (10-16 s, 64 px, 4 fps)."""
    return small_world / "videos" / "test" / f"{index:04d}.mp4"


def data_root(tmp_path: Path, name: str, videos: dict[str, Path]) -> Path:
    """Copy the offline fixture folder `name` to tmp_path and add videos {relative destination: source}."""
    root = tmp_path / name
    shutil.copytree(OFFLINE_FIXTURES / name, root)
    for destination, source in videos.items():
        target = root / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def stage_args(world, tower, out, stage, extra=()):
    """The tiny stage YAML pointed at the test world, its pretrained tower and a private feature cache."""
    cfg = REPO / "configs" / "tiny" / f"stage{stage}.yaml"
    args = [str(cfg), "--train_annotations", str(world / "train.jsonl"), "--data_root", str(world), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--logging_steps", "1",
            "--feature_cache_dir", str(out.parent / "features")]
    if stage == 1:
        args += ["--tokenizer_path", str(world / "tokenizer"), "--clip_path", str(tower)]
    return args + list(extra)


def tree_checksums(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (a file: just that one)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root) if p != root else p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(err: str, prog: str, alone: bool = True) -> str:
    """The stderr line of a reported error: no traceback, exactly one error line and it comes last;
    `alone`: nothing else on stderr (False for commands that log progress first)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert not alone or len(lines) == 1, err
    return errors[0]


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte; `connected` is set at the first."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            self.connected.set()

    def close(self) -> None:
        self._stop.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()
