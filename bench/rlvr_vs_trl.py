"""Wall time per GRPO optimizer step: ``RLVRModule`` vs TRL's ``GRPOTrainer`` on the same problem, one CPU run.

Both trainers get the same tiny Qwen2 (built from a config, saved to a temporary Hugging Face directory that each
loads), the same prompts (coding tasks whose tests a short completion passes), the same group size ``G``,
completion budget, sandboxed reward function (one :class:`~ra3_lightning.rewards.SandboxReward`), learning rate,
``beta = 0``, "dapo" loss, one optimizer step per generation batch, no vLLM, no evaluation and minimal logging.
The first ``--warmup`` steps of each are excluded; the median of the rest is reported.

    python bench/rlvr_vs_trl.py                 # needs the bench extra: pip install -e ".[bench]"
    python bench/rlvr_vs_trl.py --rounds 3 --steps 8 --prompts 4 --G 8 --max-new-tokens 32
    python bench/rlvr_vs_trl.py --reward length  # a pure-Python reward: the two steps' model work alone

The two trainers run in alternating rounds (ours first in even rounds, TRL first in odd ones), each round a fresh
trainer of each for ``--steps`` steps; a round's figure is the median step after its ``--warmup`` steps, and the
ratio is taken round by round, so that a machine busy with other work slows both alike. Printed: the median and the
range over rounds.

Where ours is faster (docs/rlvr.md, "Speed"): the sandbox scores while the trainer computes the first micro-batch's
forward pass (with fewer torch threads on CPU, so the two do not fight over the cores), ``KVSample`` generation
(cheap exponential-race sampling, a mask built once), metrics handed to ``self.log`` only on logging steps, no
old-logprob forward pass at ``num_iterations = 1``, and no accelerate / Trainer machinery per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

CODE = [
    "def add(a, b):\n    return a + b\n",
    "def total(xs):\n    acc = 0\n    for x in xs:\n        acc += x\n    return acc\n",
    "def evens(xs):\n    return [x for x in xs if x % 2 == 0]\n",
    "def rev(s):\n    return s[::-1]\n",
]


def write_tasks(path: Path, n: int) -> list[dict]:
    records = [
        {
            "task_id": f"bench/{i}",
            "prompt": f"def f{i}():\n    return {i} ",
            "entry_point": f"f{i}",
            "canonical_solution": "\n",
            "test": f"def check(candidate):\n    assert candidate() == {i}\n",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def build_model_dir(out: Path, hidden: int, layers: int) -> None:
    from ra3_lightning.models import TinyLMConfig, build_tiny_lm, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(CODE * 50, vocab_size=512)
    torch.manual_seed(0)
    cfg = TinyLMConfig(hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2, intermediate_size=3 * hidden)
    build_tiny_lm(cfg, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)


def run_ours(model_dir: Path, tasks_path: Path, reward, args) -> list[float]:
    import lightning as L

    from ra3_lightning.data.task_data import TaskDataModule
    from ra3_lightning.modules.rlvr import RLVRModule
    from ra3_lightning.optim import Optim
    from ra3_lightning.rl.config import PolicyLoss

    times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t)

    module = RLVRModule(
        pretrained=str(model_dir), num_generations=args.G, max_completion_length=args.max_new_tokens, reward_fn=reward,
        loss=PolicyLoss(loss_type="dapo", beta=0.0), optim=Optim(lr=args.lr, max_grad_norm=1.0),
        log_samples_every_n_steps=0,
    )  # fmt: skip
    data = TaskDataModule(str(tasks_path), batch_size=args.prompts, prompt_template="plain")
    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[StepTimer()], limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, data)
    return times


def run_trl(model_dir: Path, records: list[dict], reward, args, out_dir: Path) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ra3_lightning.data.tasks import tasks_from_records

    by_id = {t.task_id: t for t in tasks_from_records(records)}

    def sandbox_reward(prompts, completions, task_id, **kwargs):
        return reward(list(completions), [by_id[t] for t in task_id])

    sandbox_reward.__name__ = "sandbox_reward"
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=args.steps, per_device_train_batch_size=args.prompts * args.G,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=args.G,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, lr_scheduler_type="constant",
        beta=0.0, loss_type="dapo", use_vllm=False, use_cpu=True, bf16=False, report_to="none",
        logging_steps=10_000, save_strategy="no", eval_strategy="no", temperature=1.0, top_p=1.0, seed=0,
        max_grad_norm=1.0, warmup_steps=0, weight_decay=0.0, dataloader_num_workers=0,
    )  # fmt: skip
    dataset = Dataset.from_list([{"prompt": r["prompt"], "task_id": r["task_id"]} for r in records])
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=sandbox_reward, args=config,
        train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (each trains both, fresh)")
    parser.add_argument("--steps", type=int, default=8, help="steps per trainer per round")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each round not timed")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (x G completions)")
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2, help="sandbox worker processes")
    parser.add_argument(
        "--reward", choices=("sandbox", "length"), default="sandbox",
        help="sandbox: run the tests (the real step); length: an instant pure-Python reward (no sandbox to hide)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from ra3_lightning.rewards import SandboxReward

    ours_s, trl_s = [], []
    with tempfile.TemporaryDirectory() as tmp, SandboxReward(mode="binary", workers=args.workers) as sandbox:
        reward = sandbox if args.reward == "sandbox" else length_reward
        tmp = Path(tmp)
        build_model_dir(tmp / "model", args.hidden, args.layers)
        records = write_tasks(tmp / "tasks.jsonl", max(16, args.prompts * 4))
        for r in range(args.rounds):  # alternate who goes first, so that a busy machine slows both alike
            for name in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
                if name == "ours":
                    times = run_ours(tmp / "model", tmp / "tasks.jsonl", reward, args)
                else:
                    times = run_trl(tmp / "model", records, reward, args, tmp / f"trl_out{r}")
                median = statistics.median(times[args.warmup :])
                (ours_s if name == "ours" else trl_s).append(median)
                print(f"round {r}: {name:4s} {median:.3f} s/step", flush=True)
        floor = decode_floor(tmp / "model", args)
    ratios = [o / t for o, t in zip(ours_s, trl_s, strict=True)]
    print(f"config: {args.prompts} prompts x G={args.G}, max_new_tokens={args.max_new_tokens}, reward={args.reward}, "
          f"{args.rounds} rounds x {args.steps} steps ({args.warmup} warm-up) per trainer")  # fmt: skip
    print(f"RLVRModule    : {spread(ours_s, 's/step')}")
    print(f"TRL GRPO      : {spread(trl_s, 's/step')}")
    print(f"ratio ours/TRL: {spread(ratios, 'x')} per round (target <= 0.6x)")
    print(f"floor         : {floor:.3f} s for a bare transformers prefill + "
          f"{args.max_new_tokens} cached decoding calls on {args.prompts * args.G} rows, argmax only")  # fmt: skip


@torch.no_grad()
def decode_floor(model_dir: Path, args, repeats: int = 10) -> float:
    """Median time of the least any sampler built on the ``transformers`` model can do: prefill, then one cached
    forward per new token, argmax — no sampling, log-probs, stopping or bookkeeping."""
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = torch.randint(5, 300, (args.prompts * args.G, 12))

    def run() -> None:
        cache = DynamicCache(config=model.config)
        token = model(prompts, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(args.max_new_tokens):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def length_reward(completions: list[str], tasks: list) -> list[float]:
    """An instant reward with variance inside each group (so both trainers take a real policy-gradient step)."""
    return [float(len(c) % 2) for c in completions]


def spread(values: list[float], unit: str) -> str:
    """``median [min, max] unit`` of per-round figures."""
    return f"{statistics.median(values):.3f} {unit} median [{min(values):.3f}, {max(values):.3f}] over {len(values)}"


if __name__ == "__main__":
    main()
