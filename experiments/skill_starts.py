"""Where do two mid-trained models differ on the evaluation tasks? A teacher-forced look at the skill starts.

Pass@1 over sampled completions is a noisy yardstick for two arms of one seed. This script scores each checkpoint
deterministically on the canonical solutions of a synthetic task split (prompt, then the solution, tokenised apart as
generation sees them) and reports, per checkpoint:

- ``start_acc``: top-1 accuracy on the first content token of every line where a skill starts (the token that
  chooses the next block — what a plan would help with);
- ``start_nll`` / ``other_nll``: mean per-token NLL on skill-start lines / on every other solution line;
- ``code_nll``: mean per-token NLL on the whole solution;

and each checkpoint's paired difference to the first one, task by task (mean ± standard error over tasks)::

    python experiments/skill_starts.py --tasks /work/runs/pair/seed3/data/eval \\
        --ckpt NTP=/work/runs/pair/seed3/checkpoints/ntp.ckpt RA3=/work/runs/pair/seed3/checkpoints/ra3.ckpt

``--out F`` writes the per-task numbers and the summary as JSON. Only splits written by the synthetic world carry the
``skill_starts`` field this needs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import datasets
import torch

from ra3_lightning.modules.base import load_lm_source

METRICS = ("start_acc", "start_nll", "other_nll", "code_nll")


def line_of_chars(text: str, offset: int) -> list[int]:
    """Program line index of every character of ``text``, the text starting at program line ``offset``."""
    lines, line = [], offset
    for char in text:
        lines.append(line)
        line += char == "\n"
    return lines


@torch.no_grad()
def score_task(model, tokenizer, record: dict) -> dict[str, float]:
    """The four metrics of one task (NaN where a task has no token of a kind)."""
    prompt, solution = record["prompt"], record["canonical_solution"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    enc = tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([prompt_ids + enc["input_ids"]])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # [T-1, V]: position i predicts token i+1
    first = len(prompt_ids)
    target = ids[0, first:]
    token_logp = logp[first - 1 :].gather(-1, target[:, None]).squeeze(-1)  # [S]
    argmax_ok = logp[first - 1 :].argmax(-1) == target  # [S]
    char_line = line_of_chars(solution, prompt.count("\n"))
    starts = set(record["skill_starts"])
    start_tokens, start_lines, other_lines = [], [], []
    seen_start: set[int] = set()
    for k, (begin, end) in enumerate(enc["offset_mapping"]):
        line = char_line[min(begin, len(char_line) - 1)]
        (start_lines if line in starts else other_lines).append(k)
        content = solution[begin:end].strip()
        if line in starts and content and line not in seen_start:  # the first token with a visible character
            seen_start.add(line)
            start_tokens.append(k)

    def mean(values: torch.Tensor) -> float:
        return float(values.mean()) if len(values) else math.nan

    return {
        "start_acc": mean(argmax_ok[start_tokens].float()),
        "start_nll": mean(-token_logp[start_lines]),
        "other_nll": mean(-token_logp[other_lines]),
        "code_nll": mean(-token_logp),
    }


def score(checkpoint: str, tasks: datasets.Dataset) -> list[dict[str, float]]:
    model, tokenizer = load_lm_source(checkpoint)
    model.eval()
    return [score_task(model, tokenizer, record) for record in tasks]


def paired(rows: list[dict[str, float]], reference: list[dict[str, float]], metric: str) -> tuple[float, float]:
    """Mean and standard error over tasks of ``rows − reference`` (tasks where either is NaN left out)."""
    diffs = [a[metric] - b[metric] for a, b in zip(rows, reference, strict=True)]
    diffs = [d for d in diffs if not math.isnan(d)]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def summary(per_ckpt: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    reference = next(iter(per_ckpt.values()))
    out = {}
    for name, rows in per_ckpt.items():
        out[name] = {m: statistics.mean(r[m] for r in rows if not math.isnan(r[m])) for m in METRICS}
        for m in METRICS:
            out[name][f"{m}_diff"], out[name][f"{m}_se"] = paired(rows, reference, m)
    return out


def print_table(table: dict[str, dict[str, float]], tasks: int) -> None:
    first = next(iter(table))
    print(f"{tasks} tasks; paired difference to {first} (mean ± s.e. over tasks)")
    print("| checkpoint | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, row in table.items():
        cells = [f"{row[m]:.4f} ({row[m + '_diff']:+.4f} ± {row[m + '_se']:.4f})" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", required=True, help="a synthetic task split saved with save_to_disk")
    parser.add_argument("--ckpt", nargs="+", required=True, help="NAME=PATH, the first is the reference")
    parser.add_argument("--out", help="write per-task numbers and the summary here (JSON)")
    args = parser.parse_args()
    tasks = datasets.load_from_disk(args.tasks)
    if "skill_starts" not in tasks.column_names:
        raise SystemExit(f"{args.tasks}: no 'skill_starts' field (only synthetic task splits carry it)")
    named = dict(item.split("=", 1) for item in args.ckpt)
    per_ckpt = {name: score(path, tasks) for name, path in named.items()}
    table = summary(per_ckpt)
    print_table(table, len(tasks))
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoints": named, "summary": table, "per_task": per_ckpt}, indent=1))


if __name__ == "__main__":
    main()
