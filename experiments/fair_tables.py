"""The tables of ``docs/results/fair_results.md`` from finished ``ra3 demo`` seed directories (their ``results.json``).

    python experiments/fair_tables.py reports/full/seed0 reports/full/seed1 reports/full/seed2

Prints markdown: pass@1 per model and seed, the paired differences (mean ± sample std over seeds, and in how
many seeds each sign), the E-step and evaluation diagnostics, pass@1 by number of skills, and the RLVR curves.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MODELS = ("base", "ntp", "ra3", "ra3_nothink", "rlvr_ntp", "rlvr_ra3", "rlvr_ra3_nothink")


def paired(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    lower = sum(v < 0 for v in values)
    return f"{', '.join(f'{v:+.3f}' for v in values)} (mean {mean:+.3f}{spread}; below 0 in {lower} of {len(values)})"


def num(x: float | None) -> str:
    """``x`` to 3 decimals, or ``n/a`` where the run has no value (e.g. no annotated traces to score)."""
    return "n/a" if x is None else f"{x:.3f}"


def rlvr_gain(run: dict, arm: str, split: str) -> float:
    """Last minus first point of an arm's RLVR pass@1 curve on ``split`` (``heldout`` / ``heldin``)."""
    curve = run["fairness"]["rlvr_curves"][arm][split]
    return curve[-1][1] - curve[0][1]


def main(dirs: list[str]) -> None:
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    seeds = [r["seed"] for r in runs]
    ev = [r["fairness"]["eval_runs"] for r in runs]
    print("| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |\n|---|" + "---:|" * (len(seeds) + 1))
    for m in MODELS:
        vals = [e[m]["pass@1"] for e in ev if m in e]
        print(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.mean(vals):.3f} |")
    print()
    for a, b in (("ntp", "ra3"), ("ntp", "ra3_nothink"), ("ra3", "ra3_nothink"), ("rlvr_ntp", "rlvr_ra3"),
                 ("base", "ntp"), ("base", "ra3"), ("ntp", "rlvr_ntp"), ("ra3", "rlvr_ra3")):  # fmt: skip
        print(f"- {b} − {a}: " + paired([e[b]["pass@1"] - e[a]["pass@1"] for e in ev]))
    print("\nTHINK rate per EM iteration / recall / logp gain:")
    for r in runs:
        rec = r["recovery"]
        print(f"- seed {r['seed']}: think " + " → ".join(num(x["think_rate"]) for x in rec)
              + "; recall " + " → ".join(num(x["recall"]) for x in rec)
              + f"; rationale share {r['fairness']['token_budget']['ra3_rationale_share']:.4f}"
              + f"; ra3 rationale_rate {r['fairness']['eval_runs']['ra3']['rationale_rate']:.3f}"
              + f" accuracy {r['fairness']['eval_runs']['ra3']['rationale_accuracy']:.2f}")  # fmt: skip
    print("\nRA3 − NTP by number of skills:")
    for k in range(2, 7):
        key = f"pass@1_skills{k}"
        vals = [e["ra3"][key] - e["ntp"][key] for e in ev if key in e["ra3"]]
        print(f"- {k} skills: " + paired(vals))
    print("\nRLVR held-out pass@1 along the run (step: value) and held-in:")
    for r in runs:
        for arm, curve in r["fairness"]["rlvr_curves"].items():
            held = " / ".join(f"{v:.3f}" for _, v in curve["heldout"])
            heldin = " / ".join(f"{v:.3f}" for _, v in curve["heldin"])
            print(f"- seed {r['seed']} {arm}: held-out {held}; held-in {heldin}")
        print(f"  convergence: {r['fairness']['rlvr_convergence']}")
    for arm in ("ntp", "ra3"):
        for split in ("heldout", "heldin"):
            print(f"- RLVR gain, {split}, from {arm}: " + paired([rlvr_gain(r, arm, split) for r in runs]))
    print("\nStage times (s): " + "; ".join(f"seed {r['seed']}: {r['stage_times']}" for r in runs))


if __name__ == "__main__":
    main(sys.argv[1:])
