"""The arms paired by seed *and* batch order (issue 29, protocol parts 0c–0d of ``docs/results/arms_and_oracle.md``).

The RA3 arm's M-phases draw the NTP arm's batch stream (``m_order: ntp``), and both arms take the same
``shuffle_seed``, so RA3 with order ``k`` and NTP with order ``k`` saw the same batches up to the rationales. This
script reads the committed raw results and prints, for every seed, each arm's held-out pass@1 by order, the paired
differences ``arm(s, k) - NTP(s, k)``, and over seeds their mean ± standard error with the protocol's reading::

    python experiments/order_table.py docs/results/arms_and_oracle/raw --seeds 0 1 2 3 4 5

Where each order's number lives under the raw directory (order 0 is the pairing's NTP and the first stream runs):

- NTP: ``pair/seed<S>/ntp.json`` or ``pair_stream/seed<S>/ntp.json`` (order 0), ``ntp_order<k>/seed<S>/ablation.json``;
- RA3: ``ra3_stream/seed<S>`` (order 0 of a pairing made before the shared stream, ``pair/``) or the stream
  pairing's own ``pair_stream/seed<S>/ra3.json``, and ``ra3_stream_order<k>/seed<S>``;
- machinery only (``think_cost`` 100): ``think100_stream/seed<S>``, ``think100_stream_order<k>/seed<S>``.

A seed counts with the distinct orders every arm has on it (``shuffle_seed`` defaults to the seed, so on seed ``k``
order ``k`` is order 0 again and counts once); over seeds, each seed weighs as one (the mean of its orders).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

ARMS = {"NTP": ("ntp", "ntp"), "RA3": ("ra3_stream", "ra3"), "machinery only": ("think100_stream", "ra3")}
ORDER0 = {  # where order 0 of each arm may live (folder, file); one of them per seed
    "NTP": (("pair", "ntp.json"), ("pair_stream", "ntp.json")),
    "RA3": (("ra3_stream", "ablation.json"), ("pair_stream", "ra3.json")),  # pair/'s RA3 predates the shared stream
    "machinery only": (("think100_stream", "ablation.json"),),
}
CLOSE = 0.02  # the protocol's resolution: a mean within 2 s.e. of 0 and within this is "nothing separates the arms"


def _score(path: Path, model: str) -> float | None:
    """pass@1 in an evaluation result (``<model>.json``) or an ablation record (``ablation.json``); ``None``: absent."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result["pass@1"] if path.name != "ablation.json" else result["eval"][model]["pass@1"]


def pass_at_1(raw: Path, arm: str, seed: int, order: int) -> float | None:
    """Held-out pass@1 of ``arm`` with batch order ``order`` on ``seed`` (``None``: not run)."""
    name, model = ARMS[arm]
    if order > 0:
        return _score(raw / f"{name}_order{order}" / f"seed{seed}" / "ablation.json", model)
    found = [x for folder, file in ORDER0[arm] if (x := _score(raw / folder / f"seed{seed}" / file, model)) is not None]
    if len(found) > 1:
        raise SystemExit(f"{arm} order 0 on seed {seed} is in more than one of {ORDER0[arm]} under {raw}")
    return found[0] if found else None


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); NaN for one value)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.mean(values), se


def reading(mean: float, se: float) -> str:
    """The protocol's reading of a paired difference's mean over seeds and its standard error."""
    if abs(mean) <= min(2 * se, CLOSE):
        return "closed: nothing separates the arms at this resolution"
    if mean <= -CLOSE and mean < -2 * se:
        return "differs: the arm is below NTP beyond the order noise"
    return f"unresolved at this resolution (2 s.e. = {2 * se:.3f})"


def seed_scores(raw: Path, seed: int, max_order: int = 9) -> dict[int, dict[str, float]]:
    """pass@1 by arm of each distinct order every arm has on ``seed``. Order ``k >= 1`` is ``shuffle_seed: k`` and
    order 0 the pairing's, whose ``shuffle_seed`` is the seed itself: on seed ``k`` order ``k`` repeats order 0's
    batches and is left out."""
    orders = [k for k in range(max_order + 1) if k == 0 or k != seed]
    found = {k: {arm: pass_at_1(raw, arm, seed, k) for arm in ARMS} for k in orders}
    return {k: by_arm for k, by_arm in found.items() if None not in by_arm.values()}


def seed_orders(raw: Path, seed: int) -> list[int]:
    """The distinct orders every arm has on ``seed``."""
    return list(seed_scores(raw, seed))


def table(raw: Path, seeds: list[int]) -> str:
    by_seed = {s: seed_scores(raw, s) for s in seeds}
    if missing := [s for s in seeds if not by_seed[s]]:
        raise SystemExit(f"no batch order is complete for every arm on seed(s) {missing} under {raw}")
    rows = ["| seed | order | NTP | RA3 | machinery only | RA3 − NTP | machinery − NTP |", "|---" * 7 + "|"]
    for s in seeds:
        for k, by_arm in by_seed[s].items():
            n, ra3, mach = (by_arm[arm] for arm in ARMS)
            rows.append(f"| {s} | {k} | {n:.3f} | {ra3:.3f} | {mach:.3f} | {ra3 - n:+.3f} | {mach - n:+.3f} |")
    pairs = {arm: {s: [o[arm] - o["NTP"] for o in by_seed[s].values()] for s in seeds} for arm in ARMS}
    ntp_by_order = [[o["NTP"] for o in by_seed[s].values()] for s in seeds]
    order_sd = [statistics.stdev(values) if len(values) > 1 else math.nan for values in ntp_by_order]
    lines = ["Orders per seed: " + "; ".join(f"{s}: {list(by_seed[s])}" for s in seeds) + ".", "", *rows, ""]
    lines.append("NTP's order spread (sample std over orders) per seed: " + ", ".join(f"{x:.3f}" for x in order_sd))
    for arm in ("RA3", "machinery only"):
        means = [statistics.mean(pairs[arm][s]) for s in seeds]
        mean, se = mean_se(means)
        diffs = [d for s in seeds for d in pairs[arm][s]]
        lines.append(
            f"{arm} − NTP: per-seed means {', '.join(f'{m:+.3f}' for m in means)}; over seeds {mean:+.3f} ± {se:.3f} "
            f"(s.e.); below 0 in {sum(d < 0 for d in diffs)} of {len(diffs)} pairs; reading: {reading(mean, se)}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", type=Path, help="the raw results directory (docs/results/arms_and_oracle/raw)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    print(table(args.raw, args.seeds))


if __name__ == "__main__":
    main()
