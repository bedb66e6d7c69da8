"""Helpers shared by the offline benchmark tests: a saved tiny model and fixture data roots
holding real videos (copies of the synthetic world's test videos).
"""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "offline"


def save_tiny_model(directory: Path, tokenizer_dir: Path) -> Path:
    """A tiny random StreamMind model saved to `directory` (what --model expects)."""
    from transformers import AutoTokenizer

    from streammind import save_model
    from tests.conftest import make_tiny

    model, processor = make_tiny(AutoTokenizer.from_pretrained(tokenizer_dir))
    save_model(model, processor, directory)
    return directory


def world_video(small_world: Path, index: int) -> Path:
    """Test video `index` of the `small_world` fixture (10-16 s, 64 px, 4 fps)."""
    return small_world / "videos" / "test" / f"{index:04d}.mp4"


def data_root(tmp_path: Path, name: str, videos: dict[str, Path]) -> Path:
    """Copy fixture folder `name` to tmp_path and add videos {relative destination: source}."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    for destination, source in videos.items():
        target = root / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root
