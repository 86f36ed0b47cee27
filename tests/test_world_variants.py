"""World variants whose docstrings stop dictating the plan (``WorldConfig.docstring``), checked by hand."""

from __future__ import annotations

import hashlib
import json

import pytest

from ra3_lightning.data.skills import SKILLS_BY_ID
from ra3_lightning.data.synthetic import (
    DOCSTRINGS,
    WorldConfig,
    build_records,
    generate_programs,
    reference_function,
    well_typed_orders,
)


def test_the_default_world_is_unchanged_by_the_option():
    digest = hashlib.sha256()
    for split in ("pretrain", "midtrain", "rlvr", "eval"):
        records = [
            {k: v for k, v in r.items() if k != "skill_comments"} for r in build_records(split, 40, 3, WorldConfig())
        ]
        digest.update(json.dumps(records, sort_keys=True).encode())
    # the records before `docstring` existed (task records have since gained `skill_comments`, the evaluation's
    # ground truth, and nothing else)
    assert digest.hexdigest()[:16] == "97d33cd1bcfd2a96"


def test_well_typed_orders_by_hand():
    s = SKILLS_BY_ID
    # keep evens (ints->ints) then add up (ints->int): adding up first leaves an int, which no ints-step takes
    assert well_typed_orders([s["filter_even"], s["sum_values"]], "ints") == {("filter_even", "sum_values")}
    # two ints->ints steps commute type-wise: two orders, so a shuffled docstring would not determine the body
    assert well_typed_orders([s["filter_even"], s["scale_each"]], "ints") == {
        ("filter_even", "scale_each"), ("scale_each", "filter_even"),
    }  # fmt: skip
    # str -> strs -> str -> int: split, join, count; only one chain from a str
    chain = [s["count_char"], s["join_words"], s["split_words"]]
    assert well_typed_orders(chain, "str") == {("split_words", "join_words", "count_char")}


@pytest.mark.parametrize("docstring", DOCSTRINGS[1:])
def test_each_variant_keeps_the_task_solvable_from_its_prompt(docstring):
    cfg = WorldConfig(docstring=docstring)
    for program in generate_programs("eval", 12, 0, cfg):
        doc = " ".join(line.strip() for line in program.header[1:])
        fn = reference_function(program)
        assert all(fn(arg) == expected for arg, expected in program.tests)  # tests still hold
        if docstring == "shuffled":
            assert sorted(p for p in program.phrases if p in doc) == sorted(program.phrases)
            assert len(well_typed_orders(program.skills, program.arg_type)) == 1  # the types fix the order
        elif docstring == "reversed":
            where = [doc.index(p) for p in program.phrases]
            assert where == sorted(where, reverse=True)  # the last step is named first
        else:
            assert not any(p in doc for p in program.phrases)  # no step is named
            calls = doc.split("Examples: ")[1].rstrip('."').split("; ")
            assert len(calls) == 3
            tested = [repr(arg) for arg, _ in program.tests]
            for call in calls:
                result = eval(call, {program.entry_point: fn})  # noqa: S307 - our own generated example
                argument = call[len(program.entry_point) + 1 : call.index(") == ")]
                assert result is True and argument not in tested  # true, and not a test's input


def test_shuffled_world_keeps_the_number_of_skills_drawn():
    lengths = [len(p.skills) for p in generate_programs("midtrain", 200, 0, WorldConfig(docstring="shuffled"))]
    assert set(lengths) == {2, 3, 4, 5, 6}


def test_unknown_docstring_style_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        WorldConfig(docstring="poem")
