"""Multi-GPU strategies the modules support, and the guard that refuses the others before anything trains.

Every module shards its LM with FSDP2 (``fully_shard`` in ``configure_model``) over the data-parallel ranks of
Lightning's ``ModelParallelStrategy``. That strategy's ``"auto"`` sizes mean *tensor* parallelism within a node
(``data_parallel_size = num_nodes``, ``tensor_parallel_size = devices``), and these modules have no tensor-parallel
plan: on 8 GPUs ``auto`` gives 8 tensor-parallel ranks holding 8 unsynchronised copies. :class:`FSDP2Strategy` is the
same strategy with the sizes these modules need by default (every rank data-parallel), and :func:`check_strategy`
refuses what would silently train something else:

* ``ModelParallelStrategy`` with ``data_parallel_size`` ≠ world size or ``tensor_parallel_size`` > 1;
* DDP, FSDP1 or DeepSpeed on several processes for a module with manual optimisation (RA3 EM, RLVR): they step
  their LM outside the strategy's wrapper (weight swaps between ``q`` and ``π``, micro-batched policy updates),
  which only FSDP2's per-module sharding supports. NTP and the E-step alone (automatic optimisation: the loss goes
  through the wrapper) also run under DDP (tested on 2 processes: the ranks end with equal weights).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from typing_extensions import override

FSDP2_HINT = (
    "use `-c configs/fsdp2.yaml` (strategy ra3_lightning.strategies.FSDP2Strategy: every rank data-parallel), or set "
    "`--trainer.strategy.data_parallel_size` to devices x num_nodes and `--trainer.strategy.tensor_parallel_size 1`"
)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as FSDP2 data parallelism: with ``"auto"`` every rank of every node is a
    data-parallel rank (the module shards weights, gradients and optimizer state over all of them).

    Args:
        data_parallel_size: Ranks the model is sharded over; ``"auto"``: ``devices × num_nodes``.
        tensor_parallel_size: Must stay 1 (the modules have no tensor-parallel plan).
        save_distributed_checkpoint: ``False`` gathers one ``.ckpt`` on rank 0 (what ``ra3 export`` reads);
            ``True`` writes one shard file per rank (faster for big models).
        **kwargs: ``process_group_backend``, ``timeout`` of ``ModelParallelStrategy``.
    """

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint, **kwargs)

    @override
    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def strategy_problem(
    strategy: str, world_size: int, manual_optimization: bool, mesh_sizes: dict[str, int] | None
) -> str | None:
    """Why a module cannot train under this strategy (``None`` if it can).

    Args:
        strategy: The strategy's class name.
        world_size: Processes in the run.
        manual_optimization: Whether the module steps its optimizers itself.
        mesh_sizes: ``ModelParallelStrategy``'s device mesh as ``{dim name: size}``; ``None`` for other strategies.

    >>> strategy_problem("ModelParallelStrategy", 8, True, {"data_parallel": 1, "tensor_parallel": 8})[:40]
    'ModelParallelStrategy resolved to data_pa'
    >>> strategy_problem("FSDP2Strategy", 8, True, {"data_parallel": 8, "tensor_parallel": 1}) is None
    True
    """
    if mesh_sizes is not None:
        dp, tp = mesh_sizes.get("data_parallel", world_size), mesh_sizes.get("tensor_parallel", 1)
        if dp != world_size or tp != 1:
            return (
                f"{strategy} resolved to data_parallel_size={dp} x tensor_parallel_size={tp} on {world_size} "
                "processes, but these modules shard over data-parallel ranks only (no tensor-parallel plan): "
                f"ranks would train unsynchronised copies. Fix: {FSDP2_HINT}."
            )
        return None
    if world_size > 1 and manual_optimization:
        return (
            f"{strategy} on {world_size} processes is not supported for this module (manual optimisation: rollouts "
            f"and frozen copies call the LM outside the strategy's wrapper, so ranks could drift apart). Fix: "
            f"{FSDP2_HINT}."
        )
    return None


def check_strategy(module: Any) -> None:
    """Raise ``ValueError`` if ``module``'s trainer fits it under a strategy it cannot train under (see the module
    docstring); evaluation (``validate`` / ``test``) runs under any strategy."""
    trainer = module.trainer
    if trainer.state.fn != "fit":
        return
    strategy = trainer.strategy
    mesh = None
    if isinstance(strategy, ModelParallelStrategy):
        device_mesh = strategy.device_mesh
        mesh = dict(zip(device_mesh.mesh_dim_names or (), tuple(device_mesh.mesh.shape), strict=True))
    problem = strategy_problem(type(strategy).__name__, trainer.world_size, not module.automatic_optimization, mesh)
    if problem is not None:
        raise ValueError(problem)
