"""Did a refactor change a result? Run the miniature ``ra3 demo`` of ``tests/test_pipeline.py`` and compare numbers.

``run`` executes that pipeline (``MINI``, seed 1) with the checkout's own code and writes ``<out>/numbers.json``:
every scalar of every TensorBoard log (tag, step, value), every evaluation result, and the report's recovery rows.
``compare`` prints which numbers of two such files differ (and which exist in only one)::

    git worktree add --detach /tmp/before <commit before the change>
    (cd /tmp/before && PYTHONPATH=/tmp/before python /path/to/experiments/pipeline_fingerprint.py run /tmp/fp_before)
    python experiments/pipeline_fingerprint.py run /tmp/fp_after
    python experiments/pipeline_fingerprint.py compare /tmp/fp_before/numbers.json /tmp/fp_after/numbers.json

Flags after ``--`` go to ``ra3 demo`` after ``MINI``: e.g. ``run /tmp/fp_line -- --stages.ra3.args
'{"model.latent.engine": "kv"}'`` forces an engine, to show that a change of default moves the numbers only
through it.

An older checkout run through ``PYTHONPATH`` needs its own callbacks visible first (``ln -s ../callbacks
ra3_lightning/callbacks`` inside it): the editable install maps ``ra3_lightning.callbacks`` to *this* checkout's
``callbacks/``. The miniature run takes about a minute on 2 CPU cores. The ``MINI`` flags are read from the
checkout that runs, so two commits whose flag names differ still run the same pipeline. Wall-clock figures are left
out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIPPED = ("time", "timing", "per_s", "perf/", "seconds", "epoch")  # tags that measure the machine, not the method


def scalars(tb: Path) -> dict[str, float]:
    """``"<stage>/<tag>@<step>" -> value`` of every event file under ``tb``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    numbers = {}
    for events in sorted(tb.rglob("events.out.tfevents.*")):
        stage = events.parent.parent.name
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if any(word in tag for word in SKIPPED):
                continue
            for event in acc.Scalars(tag):
                numbers[f"{stage}/{tag}@{event.step}"] = event.value
    return numbers


def run(out: Path, extra: list[str]) -> None:
    root = Path.cwd()
    sys.path.insert(0, str(root))
    from ra3_lightning.cli import main
    from tests.test_pipeline import MINI

    config = str(root / "configs" / "demo" / "pipeline.yaml")
    main(["demo", "-c", config, "--out", str(out), "--seed", "1", *MINI, *extra])
    numbers = scalars(out / "tb")
    for result in sorted((out / "eval").glob("*.json")):
        numbers |= {f"eval/{result.stem}/{k}": v for k, v in json.loads(result.read_text()).items()}
    for row in json.loads((out / "results.json").read_text())["recovery"]:
        numbers |= {f"recovery/{row['iteration']}/{k}": v for k, v in row.items() if isinstance(v, int | float)}
    (out / "numbers.json").write_text(json.dumps(numbers, indent=0, sort_keys=True))
    print(f"{len(numbers)} numbers -> {out / 'numbers.json'}")


def same(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    common = sorted(set(a) & set(b))
    differing = [k for k in common if not same(a[k], b[k])]
    for key in differing:
        print(f"  {key}: {a[key]!r} -> {b[key]!r}")
    for key in sorted(set(a) ^ set(b)):
        print(f"  only in {'before' if key in a else 'after'}: {key}")
    print(f"compared: {len(common)}; differing: {len(differing)}; only before: {len(set(a) - set(b))}; "
          f"only after: {len(set(b) - set(a))}")  # fmt: skip
    return 1 if differing else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("out", type=Path)
    runner.add_argument("flags", nargs="*", help="after --: more `ra3 demo` flags (e.g. a stage's args)")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out, args.flags)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
