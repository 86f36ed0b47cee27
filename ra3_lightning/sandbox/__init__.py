"""Isolated execution of untrusted, model-generated Python programs against unit tests.

``Sandbox`` (a pool of bubblewrap-isolated worker processes that fork per program) runs ``(program, TestSuite)``
pairs and returns an ``ExecResult`` each; see ``docs/sandbox.md`` for the isolation layers and the threat model.
"""

from ra3_lightning.sandbox.pool import Sandbox, isolation_available
from ra3_lightning.sandbox.types import ExecResult, Limits, TestSuite

__all__ = ["ExecResult", "Limits", "Sandbox", "TestSuite", "isolation_available"]
