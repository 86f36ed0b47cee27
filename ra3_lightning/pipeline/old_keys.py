"""The pipeline keys that moved, still read: the RA3 arm's knobs were flat ``midtrain.*`` keys before they became
RA3Module's own groups under ``ra3`` (:class:`~ra3_lightning.pipeline.spec.RA3Spec`).

An old key, on the command line (``--midtrain.think_cost 100``) or in a pipeline YAML (``midtrain: {think_cost:
100}``), sets its new key with a ``FutureWarning`` that names it, so the commands the results docs quote run the same
experiment. It raises when the new key holds a value other than both its default and the old key's: set only the new
key then. The old keys are hidden from ``--help`` and ``--print_config``, which prints them in their new places.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any, get_type_hints

from ra3_lightning.pipeline.spec import RA3_GROUPS, RA3Spec

MOVED: dict[str, str] = {
    "midtrain.num_generations": "ra3.num_generations",
    "midtrain.think_cost": "ra3.latent.think_cost",
    "midtrain.max_latent_tokens": "ra3.latent.max_latent_tokens",
    "midtrain.temperature": "ra3.latent.temperature",
    "midtrain.act_likelihood": "ra3.latent.act_likelihood",
    "midtrain.hindsight_lines": "ra3.latent.hindsight_lines",
    "midtrain.annotate_choose": "ra3.annotation.choose",
    "midtrain.annotate_samples": "ra3.annotation.num_generations",
    "midtrain.annotate_batch_size": "ra3.annotation.batch_size",
    "midtrain.q_lr": "ra3.optim.lr",
}


def new_key_type(new: str) -> Any:
    """The type of ``new`` (``ra3.<field>`` or ``ra3.<group>.<field>``), which its old key is read as."""
    _, *path = new.split(".")
    owner = RA3_GROUPS[path[0]] if len(path) == 2 else RA3Spec
    return get_type_hints(owner)[path[-1]]


def add_old_keys(parser: Any) -> None:
    """Let ``parser`` (``ra3 demo``'s) read every old key, typed as its new key, without showing it."""
    for old, new in MOVED.items():
        parser.add_argument(f"--{old}", type=new_key_type(new) | None, default=None, help=argparse.SUPPRESS)


def get(namespace: Any, key: str) -> Any:
    """``key``'s value in a parsed namespace (``None`` if unset); a group's keys live in its dict."""
    section, *path = key.split(".")
    if len(path) == 1:
        return namespace.get(key)
    return (namespace.get(f"{section}.{path[0]}") or {}).get(path[1])


def put(namespace: Any, key: str, value: Any) -> None:
    section, *path = key.split(".")
    if len(path) == 1:
        namespace[key] = value
    else:
        group = f"{section}.{path[0]}"
        namespace[group] = {**(namespace.get(group) or {}), path[1]: value}


def move_old_keys(namespace: Any) -> None:
    """Take every old key out of a parsed ``ra3 demo`` namespace and set its new key to its value (with a
    ``FutureWarning``); raise ``ValueError`` where the new key already holds another value than its default."""
    defaults = RA3Spec()
    for old, new in MOVED.items():
        value = namespace.pop(old, None)
        if value is None:
            continue
        current, default = get(namespace, new), default_of(defaults, new)
        if current not in (None, default, value):
            raise ValueError(f"{old}={value!r} and {new}={current!r}: {old} is the old name of {new}, set only {new}")
        warnings.warn(f"{old} is now {new}: rename the key ({old}={value!r} sets {new})", FutureWarning, stacklevel=2)
        put(namespace, new, value)


def default_of(defaults: RA3Spec, new: str) -> Any:
    _, *path = new.split(".")
    value = getattr(defaults, path[0])
    return value.get(path[1]) if len(path) == 2 else value


def printing_config(argv: Sequence[str]) -> list[str]:
    """The ``--print_config[=flags]`` words of ``argv`` (the pipeline prints after moving old keys)."""
    return [a for a in argv if a == "--print_config" or a.startswith("--print_config=")]
