"""RLVRModule and TaskDataModule: learning on sandbox rewards through the real CLI, the reference-model rule,
micro-batch invariance, resumable data order and seeded rollouts, prompt templates."""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.formats import SemicolonComment

from ra3_lightning.cli import main
from ra3_lightning.data.sources import DataError
from ra3_lightning.data.task_data import TaskDataModule
from ra3_lightning.estep import LatentFormat
from ra3_lightning.eval_diagnostics import comment_start_mask
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.rlvr import Evaluation, RLVRModule
from ra3_lightning.optim import Optim
from ra3_lightning.rewards import SandboxReward
from ra3_lightning.rl.config import PolicyLoss
from ra3_lightning.rl.losses import LossNormaliser

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "rlvr_tiny.yaml"
COMPLETION_DIAGNOSTICS = (
    "truncation_rate", "rationale_rate", "rationales_per_completion", "rationale_tokens", "completion_tokens",
    "code_tokens",
)  # fmt: skip
TINY = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def write_solvable_tasks(path: Path, n: int = 16) -> str:
    """HumanEval-style tasks whose prompt already returns the right value: the completion only has to keep the
    program valid (e.g. end at once). A random model rarely does (~3% of 4-token samples pass), so the reward is
    low at first and learnable."""
    with open(path, "w") as f:
        for i in range(n):
            record = {
                "task_id": f"solvable/{i}",
                "prompt": f"def f{i}():\n    return {i} ",
                "entry_point": f"f{i}",
                "canonical_solution": "\n",
                "test": f"def check(candidate):\n    assert candidate() == {i}\n",
            }
            f.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture
def tok_dir(tiny_tokenizer, tmp_path) -> str:
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def fixed_reward(completions: list[str], tasks: list) -> list[float]:
    """Stand-in reward (no sandbox): 1 for completions shorter than 8 characters."""
    return [float(len(c) < 8) for c in completions]


def test_reward_rises_through_the_cli(tmp_path, tok_dir):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl")
    steps = 40  # at 24 steps only some seeds got there; at 40 seeds 0-3 all end at >= 0.99 (the first 4: <= 0.03)
    main(
        [
            *("fit", "-c", str(DEMO), "--model.tokenizer", tok_dir, "--data.path", tasks, "--data.val_path", "null"),
            *("--model.tiny.hidden_size", "32", "--model.tiny.intermediate_size", "64"),
            *(
                "--model.max_completion_length",
                "4",
                "--model.optim.lr",
                "2e-2",
                "--model.loss.drop_zero_variance_groups",
                "false",
            ),
            *("--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0"),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)),
            *("--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"),
            *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        ]
    )
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    rewards = [float(r["train/reward_mean"]) for r in rows if r.get("train/reward_mean")]
    assert len(rewards) == steps
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    # seeded run: ~0.03 over the first 4 steps, ~1.0 over the last 4
    assert first <= 0.25 and last >= 0.6, rewards
    assert {"timing_s/gen", "timing_s/reward", "timing_s/update", "perf/throughput", "train/entropy"} <= set(rows[0])


def test_beta_zero_builds_no_reference_model(tok_dir):
    module = RLVRModule(tiny=TINY, tokenizer=tok_dir, loss=PolicyLoss(beta=0.0), num_generations=2)
    module.configure_model()
    assert module.ref_model is None
    with_ref = RLVRModule(tiny=TINY, tokenizer=tok_dir, loss=PolicyLoss(beta=0.1), num_generations=2)
    with_ref.configure_model()
    assert with_ref.ref_model is not None and not any(p.requires_grad for p in with_ref.ref_model.parameters())
    assert all(k.startswith(("model.", "pass_at_k")) for k in with_ref.state_dict())  # reference not checkpointed


def test_kl_mu_and_validation_with_a_plain_reward_callable(tmp_path, tok_dir):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=8)
    module = RLVRModule(
        tiny=TINY, tokenizer=tok_dir, num_generations=4, max_completion_length=6, reward_fn=fixed_reward,
        loss=PolicyLoss(beta=0.1, num_iterations=2), micro_batch_size=5, optim=Optim(lr=1e-2, max_grad_norm=1.0),
        evaluation=Evaluation(num_samples=2, pass_at_k=(1, 2)), log_samples_every_n_steps=0,
    )  # fmt: skip
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain", val_path=tasks, max_val_tasks=3)
    seen = {}

    class Grab(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = L.Trainer(
        max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Grab()], num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, data)
    assert trainer.global_step == 4  # num_iterations=2 updates per generation batch -> 2 batches
    assert seen["train/kl"] > 0 and "train/clip_fraction" in seen
    val = trainer.validate(module, data, verbose=False)[0]
    assert set(val) == {"val/pass@1", "val/pass@2"} | {f"val/{k}" for k in COMPLETION_DIAGNOSTICS}  # no ground truth
    assert 0.0 <= val["val/pass@1"] <= val["val/pass@2"] <= 1.0


def test_micro_batches_give_the_full_batch_gradient(tmp_path, tok_dir):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=4)
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain", shuffle=False)
    module = RLVRModule(
        tiny=TINY, tokenizer=tok_dir, num_generations=3, max_completion_length=5, loss=PolicyLoss(loss_type="grpo")
    )
    module.configure_model()
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    rollout = module.rollout(batch, module.generation, 3, step=0)
    advantages = torch.linspace(-1, 1, rollout.num_samples)  # [6]
    mask = rollout.completion_mask.float()
    norm = LossNormaliser.from_mask(mask, 5)
    module.manual_backward = lambda loss: loss.backward()
    grads = []
    budget = 2 * (rollout.prompt_ids.shape[1] + 2)  # a token budget: about two short completions per micro-batch
    assert len(list(module.micro_batches(rollout))) == 1
    for size, tokens in ((None, None), (4, None), (None, budget)):
        module.micro_batch_size, module.micro_batch_tokens = size, tokens
        if tokens:
            assert len(list(module.micro_batches(rollout))) > 1
        module.model.zero_grad()
        module.accumulate(rollout, None, None, advantages, mask, norm, with_entropy=False)
        grads.append(torch.cat([p.grad.flatten() for p in module.model.parameters()]))
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().sum() > 0
    # another rank needs two more passes: this one splits its micro-batches up to that count (FSDP2 needs equal counts)
    module.micro_batch_tokens = 3 * budget
    count = len(list(module.micro_batches(rollout)))
    module.most_across_ranks = lambda n: n + 2
    slices = list(module.micro_batches(rollout))
    assert count < 4 and len(slices) == count + 2
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(6))


def test_chunked_log_probs_give_the_dense_loss_and_gradient(tmp_path, tok_dir):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=4)
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain", shuffle=False)
    module = RLVRModule(tiny=TINY, tokenizer=tok_dir, num_generations=3, max_completion_length=5)
    module.configure_model()
    data.connect(module.tokenizer)
    data.setup("fit")
    rollout = module.rollout(next(iter(data.train_dataloader())), module.generation, 3, step=0)
    rows, out = slice(0, rollout.num_samples), {}
    for chunk in (None, 4):  # 4 positions per chunk: several chunks per sequence
        module.logprob_chunk_size = chunk
        module.model.zero_grad()
        logp, entropy = module.completion_logps(module.model, rollout, rows, with_entropy=True)
        (logp * rollout.completion_mask).sum().backward()
        out[chunk] = logp.detach(), entropy, torch.cat([p.grad.flatten() for p in module.model.parameters()])
    for dense, chunked in zip(out[None], out[4], strict=True):
        torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-4)


def test_eos_list_stop_strings_and_a_configurable_validation_backend(tok_dir):
    from ra3_lightning.generation import HFGenerate

    evaluation = Evaluation(generation=HFGenerate(temperature=0))
    module = RLVRModule(tiny=TINY, tokenizer=tok_dir, stop_strings=["\ndef "], evaluation=evaluation)
    module.configure_model()
    eos = module.tokenizer.eos_token_id
    module.model.generation_config.eos_token_id = [eos, 7]  # e.g. <|endoftext|> and <|im_end|>
    assert module.eos_token_ids() == [eos, 7]
    assert isinstance(module.evaluator.generation, HFGenerate) and module.evaluator.generation.stop is module.stop
    assert module.generation.stop is module.stop
    ids = module.tokenizer(["    return 1\n\ndef other():\n"], return_tensors="pt")["input_ids"]
    rollout = module.generation.generate(module.model, ids[:, :1], torch.ones_like(ids[:, :1]), 1, 1, eos, 0)
    rollout.completion_ids, rollout.completion_mask = ids, torch.ones_like(ids)
    assert module.decode(rollout) == ["    return 1\n"]  # the sandbox sees the text before the stop string
    with pytest.raises(TypeError, match="SamplingBackend"):
        RLVRModule(tiny=TINY, tokenizer=tok_dir, stop_strings=["x"], generation=_NotSampling())


class _NotSampling:
    pass


def test_importance_correction_is_one_when_sampler_and_trainer_agree(tmp_path, tok_dir):
    """KVSample at temperature 1 samples from the trainer's own distribution: the truncated IS weights are 1 and
    the gradient is the uncorrected one; a backend without log-probs is refused."""
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=4)
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain", shuffle=False)
    module = RLVRModule(
        tiny=TINY, tokenizer=tok_dir, num_generations=3, max_completion_length=5, loss=PolicyLoss(tis_cap=2.0)
    )
    module.configure_model()
    data.connect(module.tokenizer)
    data.setup("fit")
    rollout = module.rollout(next(iter(data.train_dataloader())), module.generation, 3, step=0)
    trainer_logp, _ = module.completion_logps(module.model, rollout, slice(0, rollout.num_samples))
    weights = module.is_weights(rollout, trainer_logp.detach(), slice(0, rollout.num_samples))
    real = rollout.completion_mask.bool()
    torch.testing.assert_close(weights[real], torch.ones_like(weights[real]), atol=1e-4, rtol=0)
    rollout.sampler_logp = None
    with pytest.raises(ValueError, match="sampler_logp"):
        module.is_weights(rollout, trainer_logp, slice(0, 2))


def test_rollouts_are_seeded_by_step(tmp_path, tok_dir):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=4)
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain")
    module = RLVRModule(tiny=TINY, tokenizer=tok_dir, num_generations=2, max_completion_length=6)
    module.configure_model()
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    a, b, c = (module.rollout(batch, module.generation, 2, step=s).completion_ids for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_data_position_resumes_without_replay(tmp_path, tiny_tokenizer):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=12)
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain", seed=3)
    data.connect(tiny_tokenizer)
    data.setup("fit")
    full = [[t.task_id for t in b.tasks] for b in data.train_dataloader()]
    assert len(full) == 6 and len({t for b in full for t in b}) == 12
    resumed = TaskDataModule(tasks, batch_size=2, prompt_template="plain", seed=3)
    resumed.connect(tiny_tokenizer)
    resumed.setup("fit")
    resumed.load_state_dict({"epoch": 0, "consumed": 4, "seed": 3})  # 4 batches trained before the checkpoint
    rest = list(resumed.train_dataloader())
    assert [[t.task_id for t in b.tasks] for b in rest] == full[4:]
    assert [b.batch_index for b in rest] == [4, 5]


def test_prompt_templates_and_overlong_prompts(tmp_path, tiny_tokenizer):
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=2)
    data = TaskDataModule(tasks, batch_size=1, prompt_template="auto")
    data.connect(tiny_tokenizer)
    data.setup("fit")
    assert data.collate(data.train_tasks).prompts[0] == "def f0():\n    return 0 "  # no chat template: plain
    tiny_tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<assistant>"
    try:
        chat = TaskDataModule(tasks, batch_size=1, prompt_template="chat", chat_instruction="Solve:\n")
        chat.connect(tiny_tokenizer)
        chat.setup("fit")
        assert chat.collate(chat.train_tasks[:1]).prompts == ["<user>Solve:\ndef f0():\n    return 0 <assistant>"]
    finally:
        tiny_tokenizer.chat_template = None
    short = TaskDataModule(tasks, batch_size=1, prompt_template="plain", max_prompt_length=3)
    short.connect(tiny_tokenizer)
    with pytest.raises(DataError, match=r"solvable/0.*'prompt'"):
        short.setup("fit")


def test_default_prompt_is_plain_even_when_the_tokenizer_has_a_chat_template(tmp_path, tiny_tokenizer):
    """A base Qwen2.5 tokenizer ships a chat template too: only an explicit "chat" / "auto" may use it."""
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=1)
    tiny_tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<assistant>"
    try:
        prompts = {}
        for template in (None, "auto"):
            data = TaskDataModule(tasks, batch_size=1, **({"prompt_template": template} if template else {}))
            data.connect(tiny_tokenizer)
            data.setup("fit")
            prompts[template] = data.collate(data.train_tasks).prompts
    finally:
        tiny_tokenizer.chat_template = None
    assert prompts[None] == ["def f0():\n    return 0 "]  # the default: the base model continues the function
    assert prompts["auto"][0].startswith("<user>") and prompts["auto"][0].endswith("<assistant>")


def test_the_constructor_holds_only_rl_knobs():
    """Evaluation, stop strings and the seed are the base module's (``**kwargs``); at most 12 knobs of RLVR's own."""
    own = [
        p.name for p in inspect.signature(RLVRModule.__init__).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert len(own[1:]) <= 12, own
    assert not {"evaluation", "val_generation", "latent_format", "stop_strings", "seed"} & set(own)


def test_bad_configuration_is_rejected(tok_dir):
    with pytest.raises(ValueError, match="num_generations"):
        RLVRModule(tiny=TINY, tokenizer=tok_dir, num_generations=1)
    with pytest.raises(ValueError, match="loss_type"):
        RLVRModule(tiny=TINY, tokenizer=tok_dir, loss=PolicyLoss(loss_type="sum"))
    with pytest.raises(ValueError, match="needs num_samples >= 8"):
        Evaluation(pass_at_k=(1, 8), num_samples=4)
    with pytest.raises(ValueError, match="think_bias is NaN"):
        Evaluation(think_bias=float("nan"))


def test_fewer_torch_threads_while_the_sandbox_scores_on_cpu(tok_dir):
    class Reward:
        workers = 3

        def __call__(self, completions, tasks):
            return [0.0] * len(completions)

    module = RLVRModule(tiny=TINY, tokenizer=tok_dir, num_generations=2, reward_fn=Reward())
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with pytest.raises(RuntimeError), module.sharing_cpu_with_sandbox():
            assert torch.get_num_threads() == max(1, min(4, (os.cpu_count() or 1) - 3))
            raise RuntimeError("restored even on error")
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_setup_gives_each_rank_its_share_of_the_cpus_for_the_sandbox(tok_dir, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    for reward, expected in ((SandboxReward(), 4), (SandboxReward(workers=3), 3)):  # 16 CPUs / 4 ranks; given wins
        module = RLVRModule(tiny=TINY, tokenizer=tok_dir, num_generations=2, reward_fn=reward)
        module.trainer = L.Trainer(accelerator="cpu", devices=4, strategy="ddp", logger=False)  # 4 ranks per node
        module.setup("fit")
        assert reward.workers == expected
    module.reward_fn = None
    assert module.default_reward_fn().workers == 4


def even_length_reward(completions: list[str], tasks: list) -> list[float]:
    """Stand-in reward (no sandbox) that passes about half of any completions: 1 for an even length."""
    return [float(len(c) % 2 == 0) for c in completions]


def _test_with_diagnostics(
    tmp_path, tok_dir, think_bias: float | None, fmt: LatentFormat | None = None
) -> tuple[dict, list[dict]]:
    """``trainer.test`` on 4 synthetic eval tasks x 3 samples with rationales (of ``fmt``) made very likely; metrics,
    samples."""
    module = RLVRModule(
        tiny=TINY, tokenizer=tok_dir, num_generations=2, max_completion_length=12, reward_fn=even_length_reward,
        evaluation=Evaluation(
            num_samples=3, think_bias=think_bias, samples_path=str(tmp_path / "samples_{stage}_{step}.jsonl"),
            latent_format=fmt,
        ),
    )  # fmt: skip
    torch.manual_seed(0)  # the weights; sampling is seeded by the module
    module.configure_model()
    boost = 6.0 * comment_start_mask(module.tokenizer, fmt).float()  # [V]: a stand-in for a model that likes them
    boost[module.tokenizer.eos_token_id] = 4.0  # and ends early now and then (not every sample is truncated)
    module.model.register_forward_hook(lambda m, args, out: setattr(out, "logits", out.logits + boost) or out)
    data = TaskDataModule("synthetic:eval?n=4&seed=0", prompt_template="plain", val_batch_size=2, shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    results = trainer.test(module, data, verbose=False)[0]
    samples = [json.loads(line) for line in open(tmp_path / "samples_test_0.jsonl")]
    return results, samples


def test_test_logs_diagnostics_that_agree_with_the_samples_file(tmp_path, tok_dir):
    results, samples = _test_with_diagnostics(tmp_path, tok_dir, think_bias=None)
    assert len(samples) == 4 * 3
    assert set(samples[0]) == {
        "task_id", "completion", "solution", "passed", "truncated", "num_tokens", "num_code_tokens", "num_rationales",
        "skills",
    }  # fmt: skip
    for s in samples:
        assert s["passed"] == (len(s["completion"]) % 2 == 0)
        assert 0 <= s["num_code_tokens"] <= s["num_tokens"] <= 12 and (s["num_tokens"] == 12 or not s["truncated"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert results["test/truncation_rate"] == pytest.approx(mean([s["truncated"] for s in samples]))
    assert results["test/rationale_rate"] == pytest.approx(mean([s["num_rationales"] > 0 for s in samples]))
    assert results["test/completion_tokens"] == pytest.approx(mean([s["num_tokens"] for s in samples]))
    assert results["test/code_tokens"] == pytest.approx(mean([s["num_code_tokens"] for s in samples]))
    assert results["test/rationale_rate"] >= 0.5  # the boosted model comments (8 of 12 samples, seeded)
    assert 0 < results["test/truncation_rate"] < 1 and 0 < results["test/pass@1"] < 1  # the checks above can fail
    assert 0.0 <= results["test/rationale_matched_rate"] <= 1.0 and "test/rationale_accuracy" in results
    by_task = {}
    for s in samples:
        by_task.setdefault(s["task_id"], []).append(s)
    for k in {len(rows[0]["skills"]) for rows in by_task.values()}:
        tasks = [rows for rows in by_task.values() if len(rows[0]["skills"]) == k]
        assert results[f"test/tasks_skills{k}"] == len(tasks)
        expected = mean([mean([s["passed"] for s in rows]) for rows in tasks])
        assert results[f"test/pass@1_skills{k}"] == pytest.approx(expected)
    assert results["test/pass@1"] == pytest.approx(mean([s["passed"] for s in samples]))


def test_think_bias_scores_without_rationales(tmp_path, tok_dir):
    results, samples = _test_with_diagnostics(tmp_path, tok_dir, think_bias=float("-inf"))
    assert results["test/rationale_rate"] == 0.0 and all(s["num_rationales"] == 0 for s in samples)
    assert math.isnan(results["test/rationale_tokens"]) and math.isnan(results["test/rationale_matched_rate"])


def test_the_latent_format_decides_what_the_diagnostics_count_and_the_think_bias_forbids(tmp_path, tok_dir):
    """With ``;`` rationales (a second format), ``;`` lines are the rationales; forbidding them forbids ``;``."""
    results, samples = _test_with_diagnostics(tmp_path, tok_dir, None, SemicolonComment())
    lines = [[ln for ln in s["completion"].split("\n") if ln.strip().startswith(";")] for s in samples]
    assert [s["num_rationales"] for s in samples] == [len(x) for x in lines] and sum(map(len, lines)) >= 4
    results, samples = _test_with_diagnostics(tmp_path, tok_dir, float("-inf"), SemicolonComment())
    assert results["test/rationale_rate"] == 0.0 and all(s["num_rationales"] == 0 for s in samples)
