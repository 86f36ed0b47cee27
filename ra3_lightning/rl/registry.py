"""Built-in variants by name, or a user's object: the one lookup the RL knobs share (advantages, losses, KL)."""

from __future__ import annotations

from typing import TypeVar

Choice = TypeVar("Choice")


def resolve(choice: str | Choice, registry: dict[str, Choice], what: str) -> Choice:
    """The built-in ``registry[choice]`` for a name, or ``choice`` itself for an object (a user's variant)."""
    if not isinstance(choice, str):
        return choice
    if choice not in registry:
        raise ValueError(f"unknown {what} {choice!r}; choose one of {sorted(registry)} or give an object (class_path)")
    return registry[choice]
