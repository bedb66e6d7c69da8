"""The shared offline answering path: frame sampling, prompt, greedy and beam decoding, text
matching, and re-scoring saved predictions.

Run: .venv/bin/python -m pytest tests/evaluation/test_offline.py -q
"""

import itertools
import math

import numpy as np
import pytest
import torch

from streammind.engine import Engine, beam_search
from streammind.errors import BadSample
from streammind.evaluation.answering import answer, answer_beams, encode_prompt
from streammind.evaluation.clip_sampling import find_video, load_frames, uniform_times
from streammind.evaluation.text_matching import NearestMatcher, levenshtein
from tests.helpers import world_video

# ---- frames ----------------------------------------------------------------------------


def test_uniform_times_are_chunk_middles():
    np.testing.assert_allclose(uniform_times(0.0, 10.0, 5), [1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(uniform_times(2.0, 3.0, 2), [2.25, 2.75])
    with pytest.raises(ValueError):
        uniform_times(3.0, 3.0, 4)


def test_load_frames_uniform_grid_and_window(small_world):
    path = world_video(small_world, 0)  # 16 s at 4 fps
    clip = load_frames(path, num_frames=8)
    assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.times, uniform_times(0.0, 16.0, 8))
    clip = load_frames(path, num_frames=4, start=2.0, end=4.0)
    np.testing.assert_allclose(clip.times, [2.25, 2.75, 3.25, 3.75])
    clip = load_frames(path, fps=2.0, start=1.0, end=3.0)
    np.testing.assert_allclose(clip.times, [1.0, 1.5, 2.0, 2.5])
    # A grid longer than max_frames is sampled uniformly instead.
    clip = load_frames(path, fps=2.0, start=0.0, end=10.0, max_frames=5)
    np.testing.assert_allclose(clip.times, [1.0, 3.0, 5.0, 7.0, 9.0])
    # The end is clamped to the video's duration.
    np.testing.assert_allclose(load_frames(path, num_frames=2, start=12.0, end=99.0).times, [13.0, 15.0])


def test_load_frames_failures_are_counted_reasons(small_world, tmp_path):
    with pytest.raises(BadSample) as error:
        load_frames(tmp_path / "nope.mp4")
    assert error.value.reason == "missing_video"
    with pytest.raises(BadSample) as error:
        load_frames(world_video(small_world, 0), start=30.0, end=40.0)
    assert error.value.reason == "empty_video"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(BadSample) as error:
        load_frames(broken)
    assert error.value.reason == "undecodable_video"


def test_load_frames_from_an_image_directory(tmp_path):
    from PIL import Image

    for i in range(6):  # 2 s at 3 fps; frame i has value 10 * i
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(tmp_path / f"{i + 1:05d}.png")
    clip = load_frames(tmp_path, num_frames=3, frame_dir_fps=3.0)
    np.testing.assert_allclose(clip.times, [1 / 3, 1.0, 5 / 3])
    assert [int(f[0, 0, 0]) for f in clip.frames] == [10, 30, 50]


def test_find_video_tries_suffixes(tmp_path):
    (tmp_path / "a.avi").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    assert find_video(tmp_path, "a") == tmp_path / "a.avi"
    assert find_video(tmp_path, "b.mp4") == tmp_path / "b.mp4"
    assert find_video(tmp_path, "c") is None


# ---- matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ([1, 2, 3], [1, 3], 1), ([(0, 1)], [(0, 2)], 1)],
)
def test_levenshtein_hand_cases(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_nearest_matcher_equals_brute_force():
    rng = np.random.default_rng(0)
    alphabet = "abc d"
    choices = ["".join(rng.choice(list(alphabet), size=rng.integers(0, 9))) for _ in range(60)]
    matcher = NearestMatcher(choices)
    for _ in range(40):
        text = "".join(rng.choice(list(alphabet), size=rng.integers(0, 12)))
        expected = min((levenshtein(text, c), c) for c in set(choices))
        assert matcher.nearest(text) == (expected[1], expected[0])
        np.testing.assert_array_equal(matcher.distances(text), [levenshtein(text, c) for c in matcher.choices])


def test_nearest_matcher_ties_go_to_the_smallest_string():
    matcher = NearestMatcher(["pour water", "cut", "cup"])
    assert matcher.nearest("cub") == ("cup", 1)  # "cut" and "cup" both at 1
    assert matcher.nearest("pour water") == ("pour water", 0)


# ---- decoding --------------------------------------------------------------------------


class MarkovLM:
    """A fake LM whose next-token log-probs depend only on the last token."""

    def __init__(self, table: torch.Tensor):
        self.table = table.log_softmax(-1)

    def search(self, start: int, **kwargs):
        """`beam_search` from token `start`: each row's next log-probs are the table row of its new token."""
        return beam_search(self.table[start], lambda order, tokens: self.table[tokens], **kwargs)


def _all_hypotheses(lm, start, eos, max_new_tokens, length_penalty):
    """Every finished (EOS within the cap) and unfinished (cap reached) hypothesis with its score."""
    V = lm.table.shape[0]
    out = []
    for n in range(max_new_tokens + 1):
        for ids in itertools.product([t for t in range(V) if t != eos], repeat=n):
            previous, logprob = start, 0.0
            for t in ids:
                logprob += float(lm.table[previous, t])
                previous = t
            if n < max_new_tokens or n == 0:
                finished = logprob + float(lm.table[previous, eos])
                out.append((finished / (n + 1) ** length_penalty, list(ids), True))
            if n == max_new_tokens:
                out.append((logprob / n**length_penalty, list(ids), False))
    return sorted(out, key=lambda h: -h[0])


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_search_with_enough_beams_is_exhaustive(length_penalty):
    torch.manual_seed(0)
    V, eos, start, cap = 4, 3, 0, 3
    lm = MarkovLM(torch.randn(V, V) * 2)
    hyps = lm.search(start, eos_token_id=eos, max_new_tokens=cap, num_beams=36, num_return_sequences=5, length_penalty=length_penalty)
    expected = _all_hypotheses(lm, start, eos, cap, length_penalty)[:5]
    assert [(h.ids, h.finished) for h in hyps] == [(ids, fin) for _, ids, fin in expected]
    for h, (score, _, _) in zip(hyps, expected):
        assert math.isclose(h.score, score, rel_tol=1e-5)


def test_beam_search_stops_early_and_closes_at_the_cap():
    # Token 1 always ends (EOS = 1) with high probability: every beam closes at once.
    table = torch.full((3, 3), -5.0)
    table[:, 1] = 5.0
    lm = MarkovLM(table)
    hyps = lm.search(0, eos_token_id=1, max_new_tokens=50, num_beams=2)
    assert hyps[0].ids == [] and hyps[0].finished
    # EOS never likely: hypotheses close unfinished at the cap.
    lm = MarkovLM(-table)
    hyps = lm.search(0, eos_token_id=1, max_new_tokens=4, num_beams=2)
    assert all(len(h.ids) == 4 and not h.finished for h in hyps)


def test_beam_search_cache_matches_a_fresh_forward(tiny):
    """Scores computed with the reordered cache equal teacher-forced log-probs without a cache."""
    model, processor = tiny
    frames = np.random.default_rng(0).integers(0, 255, (6, 40, 50, 3), dtype=np.uint8)
    embeds = encode_prompt(model, processor, frames, "What happens?")
    lm = model.language_model
    hyps = Engine(model, processor).beam_search(embeds, max_new_tokens=5, num_beams=3)
    assert len(hyps) == 3 and len({tuple(h.ids) for h in hyps}) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    with torch.inference_mode():
        for h in hyps:
            ids = h.ids + ([processor.eos_token_id] if h.finished else [])
            full = torch.cat([embeds, lm.get_input_embeddings()(torch.tensor([ids]))], dim=1)
            logp = lm(inputs_embeds=full, use_cache=False).logits[0].float().log_softmax(-1)
            S = embeds.shape[1]
            expected = sum(float(logp[S - 1 + i, t]) for i, t in enumerate(ids))
            assert math.isclose(h.logprob, expected, rel_tol=1e-4, abs_tol=1e-4)


def test_engine_greedy_matches_argmax_without_cache(tiny):
    model, processor = tiny
    frames = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    embeds = encode_prompt(model, processor, frames, "Describe it.")
    lm = model.language_model
    ids = Engine(model, processor).generate(embeds, max_new_tokens=6)
    with torch.inference_mode():
        expected, current = [], embeds
        for _ in range(6):
            token = int(lm(inputs_embeds=current, use_cache=False).logits[0, -1].argmax())
            if token == processor.eos_token_id:
                break
            expected.append(token)
            current = torch.cat([current, lm.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    assert ids == expected


def test_encode_prompt_layout_and_answer_api(tiny):
    model, processor = tiny
    frames = np.random.default_rng(2).integers(0, 255, (5, 24, 24, 3), dtype=np.uint8)
    embeds = encode_prompt(model, processor, frames, "Q?")
    ids = processor.encode_turn_prefix("Q?", processor.placeholders_for(5), first=True)
    assert embeds.shape == (1, len(ids), model.config.text_config.hidden_size)
    # Pixel values work as input too and give the same prompt.
    pixels = processor.preprocess_frames(frames)
    torch.testing.assert_close(encode_prompt(model, processor, pixels, "Q?"), embeds)
    text = answer(model, processor, frames, "Q?", max_new_tokens=3)
    assert isinstance(text, str)
    beams = answer_beams(model, processor, frames, "Q?", max_new_tokens=3, num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and all(isinstance(b, str) for b in beams)
    assert answer(model, processor, frames, "Q?", max_new_tokens=3, num_beams=3) == beams[0]
