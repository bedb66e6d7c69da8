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


class TreeLM:
    """A fake LM whose next-token log-probs are random for every prefix (no two paths tie)."""

    def __init__(self, V: int, seed: int):
        self.V, self.seed, self.memo = V, seed, {}

    def logp(self, prefix: tuple) -> torch.Tensor:
        if prefix not in self.memo:
            g = torch.Generator().manual_seed(hash((self.seed, prefix)) % 2**31)
            self.memo[prefix] = (torch.randn(self.V, generator=g) * 2).log_softmax(-1)
        return self.memo[prefix]

    def search(self, **kwargs):
        rows = [()] * kwargs["num_beams"]

        def advance(order, tokens):
            rows[:] = [rows[o] + (t,) for o, t in zip(order.tolist(), tokens.tolist())]
            return torch.stack([self.logp(r) for r in rows])

        return beam_search(self.logp(()), advance, **kwargs)


def reference_beam_search(lm, eos, max_new_tokens, K, n_return, length_penalty):
    """The documented rule without early stopping, over live beams only: each step ranks the 2K
    best continuations of the live beams; an EOS among the first K ranks closes a hypothesis
    (scored sum / (length incl. EOS) ** length_penalty), the best K others stay live; the K best
    closed ones are kept; at the cap the live beams close unfinished."""

    def norm(logprob, n):
        return logprob / max(n, 1) ** length_penalty

    beams, finished, unfinished = [((), 0.0)], [], []
    for step in range(max_new_tokens):
        candidates = sorted(((lp + float(lm.logp(ids)[t]), ids, t) for ids, lp in beams for t in range(lm.V)), key=lambda c: -c[0])
        live = []
        for rank, (score, ids, t) in enumerate(candidates[: 2 * K]):
            if t == eos:
                if rank < K:
                    finished.append((list(ids), score, norm(score, len(ids) + 1), True))
                continue
            live.append((ids + (t,), score))
            if len(live) == K:
                break
        finished = sorted(finished, key=lambda h: -h[2])[:K]
        if not live:
            break
        beams = live
        if step == max_new_tokens - 1:
            unfinished = [(list(ids), lp, norm(lp, len(ids)), False) for ids, lp in live]
    return sorted(finished + unfinished, key=lambda h: -h[2])[:n_return]


def test_beam_search_equals_the_rule_without_early_stopping():
    """Random LMs, 1-3 beams, penalties below, at and above 0 and 1, the default penalty (1.0),
    vocabularies of 1 to 5 tokens (beams die, dead copies pad the batch, fewer hypotheses than
    asked for): the same hypotheses, log-probs and scores as the reference (early stopping must
    never change the result)."""
    for case in range(200):
        V = 1 + case % 5  # 1 and 2: fewer tokens than beams
        eos, K, cap = V - 1, 1 + case % 3, 1 + case % 4
        lm = TreeLM(V, seed=case)
        n_return = K if V < 3 else 1 + (case // 3) % K
        penalty = [-0.5, 0.0, 0.7, 1.0, 1.5][case % 5]
        kwargs = dict(eos_token_id=eos, max_new_tokens=cap, num_beams=K, num_return_sequences=n_return)
        hyps = lm.search(**kwargs) if penalty == 1.0 else lm.search(**kwargs, length_penalty=penalty)
        expected = reference_beam_search(lm, eos, cap, K, n_return, penalty)
        assert [(h.ids, h.finished) for h in hyps] == [(ids, fin) for ids, _, _, fin in expected], case
        for h, (_, logprob, score, _) in zip(hyps, expected):
            assert math.isclose(h.logprob, logprob, rel_tol=1e-5, abs_tol=1e-6) and math.isclose(h.score, score, rel_tol=1e-5, abs_tol=1e-6)


def test_beam_search_closes_only_an_eos_among_the_first_k_ranks():
    """Two beams, no length penalty. At the second step the ranks are: [0] + EOS (closed),
    [0, 0] (live), [1] + EOS (rank 2 = K: not a hypothesis), [1, 0] (live); at the third, [0, 0]
    + EOS closes. The result is [0] and [0, 0] (closing [1] would have put it second)."""
    lm = TreeLM(3, seed=0)  # tokens 0, 1 and EOS = 2
    for prefix, p in {(): [0.5, 0.4, 0.1], (0,): [0.45, 0.05, 0.5], (1,): [0.35, 0.25, 0.4],
                      (0, 0): [0.32, 0.28, 0.4], (1, 0): [0.32, 0.28, 0.4]}.items():
        lm.memo[prefix] = torch.tensor(p).log()
    hyps = lm.search(eos_token_id=2, max_new_tokens=3, num_beams=2, length_penalty=0.0)
    assert [(h.ids, h.finished) for h in hyps] == [([0], True), ([0, 0], True)]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.5 * 0.5), math.log(0.5 * 0.45 * 0.4)])


def _hand_lm(rows: dict) -> TreeLM:
    """A TreeLM with the next-token probabilities of the given prefixes written out (0 = never)."""
    lm = TreeLM(5, seed=1)  # tokens a=0, b=1, c=2, d=3 and EOS = 4
    for prefix, p in rows.items():
        lm.memo[prefix] = torch.tensor(p).log()
    return lm


def test_beam_search_with_a_negative_penalty_keeps_a_beam_that_can_still_win():
    """Penalty -1 (score = log-prob * length): at the second step the closed [] scores log .45 and [a] +
    EOS scores 2 log(.5 * .29) = -3.86; the live [a, c] (log .35) can still close at length 3
    and beat it, so the search must go on (a bound taken at the cap length, 10 tokens, would
    stop here), and [a, c] + EOS = 3 log(.35 * .99) = -3.18 replaces [a] + EOS."""
    lm = _hand_lm({(): [0.5, 0.04, 0.005, 0.005, 0.45], (0,): [0.0025, 0.0025, 0.7, 0.005, 0.29],
                   (0, 2): [0.0025] * 4 + [0.99]})
    hyps = lm.search(eos_token_id=4, max_new_tokens=10, num_beams=2, length_penalty=-1.0)
    assert [(h.ids, h.finished) for h in hyps] == [([], True), ([0, 2], True)]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.45), 3 * math.log(0.5 * 0.7 * 0.99)])


def test_beam_search_with_a_negative_penalty_closes_a_live_beam_at_the_cap():
    """Penalty -1, cap 2: at the last step [a] + EOS scores 2 log(.5 * .45) = -2.98 and the live
    [a, c] closes unfinished at length 2 with 2 log(.25) = -2.77, better: the bound at the last
    step is the live beam's own length (it closes as it is), not one more."""
    lm = _hand_lm({(): [0.5, 0.04, 0.005, 0.005, 0.45], (0,): [0.0025, 0.0025, 0.5, 0.045, 0.45]})
    hyps = lm.search(eos_token_id=4, max_new_tokens=2, num_beams=2, length_penalty=-1.0)
    assert [(h.ids, h.finished) for h in hyps] == [([], True), ([0, 2], False)]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.45), 2 * math.log(0.25)])


def test_beam_search_pads_with_copies_of_a_live_beam_when_few_tokens_are_possible():
    """A model that gives all but two tokens zero probability (a constrained vocabulary): after
    the first step one beam lives, [7]; the second row of the batch is a dead copy of live beam
    0 (a row of the batch, not token 7's number), and the search goes on from [7]."""
    lm = TreeLM(10, seed=2)  # EOS = 9
    first = torch.zeros(10)
    first[7], first[9] = 0.6, 0.4
    after = torch.zeros(10)
    after[3], after[9] = 0.1, 0.9
    lm.memo[()], lm.memo[(7,)] = first.log(), after.log()
    hyps = lm.search(eos_token_id=9, max_new_tokens=3, num_beams=2)
    assert [(h.ids, h.finished) for h in hyps] == [([7], True), ([], True)]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.6 * 0.9) / 2, math.log(0.4)])


def test_beam_search_settings_are_checked():
    lm = MarkovLM(torch.randn(4, 4))
    assert len(lm.search(0, eos_token_id=3, max_new_tokens=2, num_beams=1)) == 1  # one beam is greedy search
    for beams, returned in [(0, None), (2, 0), (2, 3)]:
        with pytest.raises(ValueError, match="need num_beams >= 1 and 1 <= num_return_sequences <= num_beams"):
            lm.search(0, eos_token_id=3, max_new_tokens=2, num_beams=beams, num_return_sequences=returned)


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
