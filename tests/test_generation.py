"""Both generation backends: grouping, EOS masks, truncation, greedy equivalence with a cache-free reference, the
sampler's distribution and truncations, and the model left as it was found."""

from __future__ import annotations

import copy

import pytest
import torch

from ra3_lightning.eval_diagnostics import comment_start_mask, think_logit_bias
from ra3_lightning.generation import (
    BASE_MODEL_STOP,
    HUMANEVAL_STOP,
    MBPP_STOP,
    HFGenerate,
    KVSample,
    StopStrings,
    add_logit_bias,
    completion_mask_from_eos,
    decode,
    sample_from_logits,
    unsharded_for_generation,
)

EOS = 9


def test_completion_mask_from_eos_by_hand():
    ids = torch.tensor([[5, 9, 9, 9], [5, 6, 7, 8], [9, 9, 9, 9]])
    mask, truncated = completion_mask_from_eos(ids, EOS)
    # row 0: EOS at 1 -> tokens 0..1; row 1: no EOS -> all 4, truncated; row 2: EOS first -> only that token
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_any_of_several_eos_ids_ends_a_completion():
    ids = torch.tensor([[5, 8, 9, 9], [5, 6, 9, 8], [5, 6, 7, 4]])
    mask, truncated = completion_mask_from_eos(ids, [EOS, 8])  # e.g. <|endoftext|> and <|im_end|>
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="EOS"):
        completion_mask_from_eos(ids, [])


def _prompts(tokenizer):
    tokenizer.padding_side = "left"
    enc = tokenizer(["def add(a, b):\n", "def f():\n    return 1"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


BACKENDS = pytest.mark.parametrize("backend", [HFGenerate, KVSample])


@BACKENDS
def test_groups_are_contiguous_and_masks_consistent(tiny_lm, tiny_tokenizer, backend):
    ids, mask = _prompts(tiny_tokenizer)
    torch.manual_seed(0)
    rollout = backend().generate(tiny_lm, ids, mask, 3, 7, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    assert rollout.num_samples == 6
    assert torch.equal(rollout.prompt_ids[:3], ids[:1].expand(3, -1))  # samples 0..2 belong to prompt 0
    assert torch.equal(rollout.prompt_ids[3:], ids[1:].expand(3, -1))
    assert rollout.completion_ids.shape[1] <= 7
    lengths = rollout.completion_mask.sum(-1)
    has_eos = (rollout.completion_ids == tiny_tokenizer.eos_token_id).any(-1)
    assert torch.equal(rollout.truncated, ~has_eos)
    assert bool((lengths[rollout.truncated] == rollout.completion_ids.shape[1]).all())


@pytest.mark.parametrize(
    "backend,attention", [(HFGenerate, "sdpa"), (KVSample, "sdpa"), (KVSample, "eager")]
)  # KVSample passes SDPA a 4-D mask, other kernels the 2-D one
def test_matches_a_kv_cache_free_reference(tiny_lm, tiny_tokenizer, backend, attention):
    """Greedy-equivalent check: at temperature -> 0 sampling picks the argmax, which a plain re-prefill loop
    without any cache reproduces token for token — for both prompts of a left-padded batch."""
    if tiny_lm.config._attn_implementation != attention:
        tiny_lm = copy.deepcopy(tiny_lm)
        tiny_lm.set_attn_implementation(attention)
    ids, mask = _prompts(tiny_tokenizer)
    assert not mask.all()  # the shorter prompt is left-padded
    rollout = backend(temperature=1e-4).generate(tiny_lm, ids, mask, 1, 5, -1, tiny_tokenizer.pad_token_id)
    greedy = backend(temperature=0).generate(tiny_lm, ids, mask, 1, 5, -1, tiny_tokenizer.pad_token_id)
    assert torch.equal(greedy.completion_ids, rollout.completion_ids)  # temperature 0 is exactly the argmax
    for row in range(2):
        seq = ids[row, mask[row].bool()].tolist()
        with torch.no_grad():
            for _ in range(5):
                seq.append(int(tiny_lm(torch.tensor([seq])).logits[0, -1].argmax()))
        assert rollout.completion_ids[row].tolist() == seq[-5:]


def test_decode_stops_when_every_row_ended_and_pads_after_eos(tiny_lm, tiny_tokenizer):
    """The loop's bookkeeping, with a scripted picker: row 0 ends at step 1, row 1 at step 3."""
    ids, mask = _prompts(tiny_tokenizer)
    script = iter([[5, 6], [EOS, 7], [8, 8], [8, EOS], [8, 8]])
    calls = []

    def pick(logits):
        calls.append(logits.shape)
        return torch.tensor(next(script))

    tokens, logp = decode(tiny_lm, ids, mask, 10, EOS, 0, pick)
    assert logp is None  # this picker reports no log-probs
    assert tokens.tolist() == [[5, EOS, 0, 0], [6, 7, 8, EOS]]  # pad after EOS; no step after the last EOS
    assert len(calls) == 4 and calls[0] == (2, tiny_lm.config.vocab_size)
    script = iter([[5, 6], [EOS, 7], [8, 8], [8, EOS], [8, 8]])
    assert decode(tiny_lm, ids, mask, 10, [EOS, 7], 0, pick)[0].tolist() == [[5, EOS], [6, 7]]  # either id ends a row
    assert decode(tiny_lm, ids, mask, 2, EOS, 0, lambda logits: torch.tensor([5, 6]))[0].tolist() == [[5, 5], [6, 6]]


def test_sampler_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    draws = sample_from_logits(logits.expand(40_000, -1), temperature=2.0)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert torch.allclose(freq, (logits / 2.0).softmax(-1), atol=0.01), freq


def test_top_k_and_top_p_keep_the_same_tokens_as_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for k, p in ((5, 1.0), (0, 0.9), (0, 0.3), (10, 0.8)):
        expected = logits
        if k:
            expected = TopKLogitsWarper(k)(None, expected)
        if p < 1:
            expected = TopPLogitsWarper(p)(None, expected)
        allowed = torch.isfinite(expected)  # [64, 50]
        draws = torch.stack([sample_from_logits(logits, 1.0, k, p) for _ in range(200)], 1)  # [64, 200]
        assert bool(allowed.gather(1, draws).all()), (k, p)  # never a token transformers would drop
        seen = torch.zeros_like(allowed).scatter(1, draws, True)
        assert bool((seen <= allowed).all()) and bool(seen.sum(1).ge(1).all())


def test_model_state_is_restored(tiny_lm):
    tiny_lm.train()
    tiny_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with unsharded_for_generation(tiny_lm):
        assert not tiny_lm.training
        assert not tiny_lm.model.gradient_checkpointing
    assert tiny_lm.training and tiny_lm.model.gradient_checkpointing


@BACKENDS
def test_bad_sampling_settings(backend):
    with pytest.raises(ValueError, match="temperature"):
        backend(temperature=-0.5)
    assert backend(temperature=0.0).temperature == 0.0  # greedy
    with pytest.raises(ValueError, match="top_p"):
        backend(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        backend(top_k=-1)


# --------------------------------------------------------------------------------------------- logit bias
def test_add_logit_bias_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    # the bias covers the tokenizer's 2 tokens; the model's padded third token is left alone
    assert add_logit_bias(logits, torch.tensor([0.0, float("-inf")])).tolist() == [[1.0, float("-inf"), 3.0]]
    assert add_logit_bias(logits, torch.tensor([1.0, 1.0, -1.0])).tolist() == [[2.0, 3.0, 2.0]]
    with pytest.raises(ValueError, match="logit bias over 4 tokens"):
        add_logit_bias(logits, torch.zeros(4))


def test_bias_comes_before_the_nucleus():
    """Token 0 holds almost all the mass; forbidding it must leave a nucleus of the others (a bias applied after
    top-p would leave no token at all)."""
    torch.manual_seed(0)
    logits = torch.tensor([12.0, 0.0, 1.0, 0.0, 0.0]).expand(2_000, -1)
    bias = torch.tensor([float("-inf"), 0.0, 0.0, float("-inf"), 0.0])
    draws = sample_from_logits(logits, 1.0, 0, 0.5, bias)
    assert set(draws.tolist()) == {2}  # p(2 | not 0, 3) = e / (e + 2) = 0.58 >= 0.5: the nucleus is token 2 alone
    draws = sample_from_logits(logits, 1.0, 0, 1.0, bias)
    assert set(draws.tolist()) == {1, 2, 4}


def _boost_comments(model, tokenizer, boost: float = 10.0):
    """Make comment-start tokens very likely (a stand-in for an RA3 model that always writes rationales)."""
    extra = boost * comment_start_mask(tokenizer).float()  # [V]

    def hook(module, args, out):
        out.logits = add_logit_bias(out.logits, extra)
        return out

    return model.register_forward_hook(hook)


@BACKENDS
def test_think_bias_forbids_comment_tokens(tiny_lm, tiny_tokenizer, backend):
    ids, mask = _prompts(tiny_tokenizer)
    starts = comment_start_mask(tiny_tokenizer)  # [V]
    _boost_comments(tiny_lm, tiny_tokenizer)
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    torch.manual_seed(0)
    free = backend().generate(tiny_lm, ids, mask, 4, 8, eos, pad)
    assert starts[free.completion_ids].any(-1).float().mean() >= 0.75  # the boosted model comments

    banned = backend().with_logit_bias(think_logit_bias(starts, float("-inf")))
    torch.manual_seed(0)
    rollout = banned.generate(tiny_lm, ids, mask, 4, 8, eos, pad)
    assert not bool(starts[rollout.completion_ids[rollout.completion_mask.bool()]].any())
    texts = tiny_tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    assert not any(line.lstrip().startswith("#") for text in texts for line in text.split("\n"))


@BACKENDS
@pytest.mark.parametrize("temperature", [1.0, 1e-4])  # sampled, and greedy-equivalent
def test_zero_bias_changes_nothing(tiny_lm, tiny_tokenizer, backend, temperature):
    ids, mask = _prompts(tiny_tokenizer)
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    runs = []
    for bias in (None, torch.zeros(len(tiny_tokenizer))):
        torch.manual_seed(0)
        sampler = backend(temperature=temperature).with_logit_bias(bias)
        runs.append(sampler.generate(tiny_lm, ids, mask, 3, 10, eos, pad).completion_ids)
    assert torch.equal(runs[0], runs[1])


# --------------------------------------------------------------------------------------------- stop strings
def test_stop_strings_cut_by_hand(tiny_tokenizer):
    stop = StopStrings(tiny_tokenizer)
    assert stop.strings == BASE_MODEL_STOP
    assert stop.cut("    return a + b\n\ndef main():\n    pass\n") == "    return a + b\n"
    assert stop.cut("    x = 1\nprint(x)\nclass A:\n") == "    x = 1"  # the earliest stop string wins
    assert stop.cut("    return 1\n") == "    return 1\n"
    assert stop.cut("    define = 1\n    # def inside a body\n") == "    define = 1\n    # def inside a body\n"
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings(tiny_tokenizer, [""])


def test_trim_ends_the_mask_at_the_token_completing_the_stop_string(tiny_tokenizer):
    stop = StopStrings(tiny_tokenizer, ["\ndef "])
    body = tiny_tokenizer.encode("    return 1\n", add_special_tokens=False)
    after = tiny_tokenizer.encode("\ndef g():\n    pass", add_special_tokens=False)
    ids = torch.tensor([body + after, body + [0] * len(after)])
    mask = torch.tensor([[1] * ids.shape[1], [1] * len(body) + [0] * len(after)])
    trimmed, truncated = stop.trim(ids, mask, torch.tensor([True, False]))
    end = int(trimmed[0].sum())
    kept = tiny_tokenizer.decode(ids[0, :end].tolist())
    assert "\ndef " in kept and "\ndef " not in tiny_tokenizer.decode(
        ids[0, : end - 1].tolist()
    )  # the first such token
    assert stop.cut(kept) == "    return 1\n"
    assert trimmed[1].tolist() == mask[1].tolist()  # no stop string: unchanged
    assert truncated.tolist() == [False, False]  # a stopped row is not truncated


def _first_stop(stop: StopStrings, tokenizer, text: str) -> tuple[int | None, str]:
    """Decode ``text``'s tokens one step at a time as the decoding loop checks them (``hit`` on the last tokens):
    the step whose token completes a stop string (``None``: never), and the text ``trim`` keeps, cut."""
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])  # [1, n]
    hits = [t for t in range(ids.shape[1]) if stop.hit(ids[:, : t + 1], torch.tensor([True]))[0]]
    mask, _ = stop.trim(ids, torch.ones_like(ids), torch.tensor([False]))
    kept = tokenizer.decode(ids[0, : int(mask.sum())].tolist())
    return (hits[0] if hits else None), stop.cut(kept)


def test_humaneval_stop_strings_keep_indented_rationales_and_cut_new_top_level_code(tiny_tokenizer):
    """An RA3 completion writes ``#`` rationales inside the body: ``"\\n    #"`` is not the top-level ``"\\n#"``."""
    stop = StopStrings(tiny_tokenizer, HUMANEVAL_STOP)
    assert stop.strings == BASE_MODEL_STOP == ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
    body = "    # reverse the list first\n    xs = xs[::-1]\n    # add them up\n    return sum(xs)\n"
    assert _first_stop(stop, tiny_tokenizer, body) == (None, body)  # never stops, nothing cut
    for after in ("\ndef main():\n    pass\n", "\n# Test it\nassert f([1]) == 1\n", "\nprint(f([1]))\n"):
        step, kept = _first_stop(stop, tiny_tokenizer, body + after)
        assert step is not None and kept == body  # stopped at the new top-level line, which the grader never sees
    assert stop.cut(body + "\n\ndef helper():\n") == body + "\n"


def test_mbpp_stop_strings_keep_a_whole_program_and_cut_its_tests(tiny_tokenizer):
    stop = StopStrings(tiny_tokenizer, MBPP_STOP)
    program = "import math\n# a helper first\ndef half(x):\n    return x / 2\n\n"
    program += "def f(x):\n    # halve it\n    return half(x)\n"
    assert _first_stop(stop, tiny_tokenizer, program) == (None, program)  # imports, comments, helpers: all kept
    for after in ("assert f(2) == 1\n", '"""\nWrite a function to add.\n', "print(f(2))\n"):
        step, kept = _first_stop(stop, tiny_tokenizer, program + "\n" + after)
        assert step is not None and kept == program


@BACKENDS
def test_generation_stops_at_a_stop_string(tiny_lm, tiny_tokenizer, backend):
    ids, mask = _prompts(tiny_tokenizer)
    free = backend(temperature=0).generate(tiny_lm, ids, mask, 1, 24, -1, tiny_tokenizer.pad_token_id)
    texts = [tiny_tokenizer.decode(row.tolist()) for row in free.completion_ids]
    piece = texts[0][3:5]  # two characters the greedy completion of prompt 0 writes: a stop string it will hit
    stop = StopStrings(tiny_tokenizer, [piece])
    stopped = backend(temperature=0, stop=stop).generate(tiny_lm, ids, mask, 1, 24, -1, tiny_tokenizer.pad_token_id)
    n = int(stopped.completion_mask[0].sum())
    assert piece in tiny_tokenizer.decode(stopped.completion_ids[0, :n].tolist())
    assert n < 24 and not bool(stopped.truncated[0])
    assert stopped.completion_ids[0, :n].tolist() == free.completion_ids[0, :n].tolist()  # same tokens until then
    assert bool((stopped.completion_ids[0, n:] == tiny_tokenizer.pad_token_id).all())


# --------------------------------------------------------------------------------------------- shared prefill
def test_shared_prefill_gives_the_samples_of_repeated_prompts(tiny_lm, tiny_tokenizer):
    """Prefilling each prompt once and repeating its cache draws exactly what prefilling it G times drew (same RNG,
    same logits), and the reported log-probs are those of the tempered softmax at the drawn tokens."""
    ids, mask = _prompts(tiny_tokenizer)
    backend, G = KVSample(temperature=0.7), 3
    torch.manual_seed(0)
    shared, logp = decode(tiny_lm, ids, mask, 6, -1, 0, backend, num_samples=G)
    torch.manual_seed(0)
    repeated, _ = decode(tiny_lm, ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), 6, -1, 0, backend)
    assert torch.equal(shared, repeated)
    for row in range(2 * G):  # the sampler's log-prob = the tempered log-softmax of a cache-free forward pass
        seq = ids[row // G, mask[row // G].bool()].tolist() + shared[row].tolist()
        with torch.no_grad():
            logits = tiny_lm(torch.tensor([seq])).logits[0, -7:-1].float() / 0.7
        want = torch.log_softmax(logits, -1).gather(-1, shared[row][:, None]).squeeze(-1)
        torch.testing.assert_close(logp[row], want, atol=1e-4, rtol=0)


@BACKENDS
def test_rollout_carries_the_sampler_log_probs(tiny_lm, tiny_tokenizer, backend):
    ids, mask = _prompts(tiny_tokenizer)
    rollout = backend().generate(tiny_lm, ids, mask, 2, 5, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    if backend is HFGenerate:
        assert rollout.sampler_logp is None  # generate() does not report them here
        return
    assert rollout.sampler_logp.shape == rollout.completion_ids.shape
    assert bool((rollout.sampler_logp[rollout.completion_mask == 0] == 0).all())
    assert bool((rollout.sampler_logp[rollout.completion_mask == 1] <= 0).all())
