"""ra3_lightning — RA3 (Reasoning as Action Abstractions) for code LMs on PyTorch Lightning.

See README.md for the commands and docs/ for the design notes; stages are LightningModules under
``ra3_lightning.modules``.
"""

__version__ = "0.1.0"
