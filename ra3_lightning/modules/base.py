"""The LightningModule every stage derives from: one causal LM (``self.model``) and its tokenizer.

It owns what all stages share — where the weights come from (``pretrained`` / ``init_from`` / ``tiny``), FSDP2
sharding under ``ModelParallelStrategy``, the tokenizer travelling inside every checkpoint, export to a Hugging Face
directory, and sampling completions for evaluation — so that ``NTPModule``, ``LatentPolicyModule`` and ``RLVRModule``
only add their step logic.

Evaluation is a component every module can run: given ``evaluation`` (an
:class:`~ra3_lightning.evaluation.Evaluation` group), ``ra3 test`` samples, sandbox-scores and logs pass@k and the
diagnostics on the data module's test tasks (:class:`~ra3_lightning.evaluation.PassAtKEvaluation`); ``RLVRModule``
also validates with it. A module used only for evaluation is this class itself (``configs/eval_humaneval.yaml``).

Convention: the trained LM is always ``self.model``; checkpoints therefore hold its weights under ``model.*``,
which is what ``init_from`` and ``ra3 export`` read back, whatever module wrote the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ra3_lightning.checkpoint_io import read_checkpoint
from ra3_lightning.data.task_data import TaskBatch
from ra3_lightning.errors import CheckpointError
from ra3_lightning.evaluation import Evaluation, PassAtKEvaluation
from ra3_lightning.generation import GenerationBackend, Rollout, StopStrings, eos_list
from ra3_lightning.lora import LoRASpec, apply_lora, base_lm, is_lora_state_dict, merged_state_dict
from ra3_lightning.models import (
    DType,
    TinyLMConfig,
    build_tiny_lm,
    load_pretrained_lm,
    load_tokenizer,
    tiny_config_from_dict,
    tokenizer_files,
    tokenizer_for_tiny,
    tokenizer_from_files,
)
from ra3_lightning.optim import Optim
from ra3_lightning.strategies import check_strategy

TOKENIZER_KEY = "ra3_tokenizer"
MODEL_CONFIG_KEY = "ra3_model_config"  # the LM's own ``config.to_dict()``: a checkpoint rebuilds without its parents
LORA_KEY = "ra3_lora"  # the LoRASpec of a LoRA run: what loading needs to merge the adapter into the weights


class CausalLMModule(L.LightningModule):
    """A causal LM and its tokenizer, shardable with FSDP2 and exportable to a Hugging Face directory.

    Args:
        pretrained: Hugging Face hub id or local directory to ``from_pretrained`` (e.g. ``Qwen/Qwen2.5-Coder-1.5B``).
        init_from: Start from a ``.ckpt`` written by any ra3_lightning stage, or from a Hugging Face directory.
        tiny: Build a tiny randomly initialised model from this config (tests, CPU demo).
        tokenizer: Tokenizer hub id or directory; defaults to the model's own (or, for ``tiny``, a byte-level BPE
            trained on ``tiny.tokenizer_corpus``).
        dtype: Parameter dtype when loading ``pretrained`` weights (``None`` keeps the checkpoint's).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        attn_implementation: Passed to ``from_pretrained`` (``"sdpa"``, ``"flash_attention_2"``, ...).
        lora: Train a LoRA adapter instead of every weight (see :mod:`ra3_lightning.lora`); the frozen models a stage
            compares against are then the base weights with the adapter off. ``None``: full fine-tuning.
        evaluation: The pass@k evaluation group (:class:`~ra3_lightning.evaluation.Evaluation`: samples per task,
            temperature, pass@k, THINK bias, samples file, budget, backend, latent format, reward) that ``ra3 test``
            runs on the data module's test tasks (``RLVRModule`` also validates with it). ``None``: no evaluation.
        stop_strings: Also end a sampled completion (evaluation's; RLVR's rollouts too) once its text contains one
            of these (base-model completions of HumanEval-style prompts: ``["\\ndef ", "\\nclass ", "\\nif __name__",
            "\\nprint(", "\\n#"]``, :data:`~ra3_lightning.generation.HUMANEVAL_STOP`; of MBPP-style prompts, which the
            completion answers with a whole program: :data:`~ra3_lightning.generation.MBPP_STOP`). They match the
            decoded text, so an indented comment (``"\\n    #"``, a rationale) is no ``"\\n#"``. The text the sandbox
            scores is cut before the stop string. ``None`` = EOS and the budget only. The backends must be
            ``SamplingBackend`` s. Every EOS id of the tokenizer and of the model's ``generation_config`` (e.g.
            ``<|endoftext|>`` and ``<|im_end|>``) ends a completion.
        seed: Seed of the sampling RNG: each batch's samples are drawn from ``(seed, step, rank)`` (evaluation, RL
            rollouts of RLVR and the E-step).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        init_from: str | None = None,
        tiny: TinyLMConfig | None = None,
        tokenizer: str | None = None,
        dtype: DType | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        lora: LoRASpec | None = None,
        evaluation: Evaluation | None = None,
        stop_strings: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        given = [name for name, v in (("pretrained", pretrained), ("init_from", init_from), ("tiny", tiny)) if v]
        if len(given) != 1:
            raise ValueError(
                f"Give exactly one of `pretrained`, `init_from` or `tiny` (got {given or 'none'}); e.g. "
                "`--model.pretrained Qwen/Qwen2.5-Coder-1.5B` or `--model.tiny.hidden_size 64`."
            )
        self.pretrained, self.init_from, self.tiny = pretrained, init_from, tiny
        self.dtype_name, self.gradient_checkpointing = dtype, gradient_checkpointing
        self.attn_implementation, self.lora = attn_implementation, lora
        self.tokenizer: PreTrainedTokenizerBase = self._load_tokenizer(tokenizer)
        self.model: PreTrainedModel | None = None
        self.seed, self.evaluation = seed, evaluation
        self.stop = StopStrings(self.tokenizer, stop_strings) if stop_strings else None
        self.evaluator = PassAtKEvaluation(evaluation, self.tokenizer, self.stop) if evaluation else None

    # ----------------------------------------------------------------------------------------- building
    def _load_tokenizer(self, tokenizer: str | None) -> PreTrainedTokenizerBase:
        if tokenizer is not None:
            return load_tokenizer(tokenizer)
        if self.tiny is not None:
            return tokenizer_for_tiny(self.tiny)
        if self.pretrained is not None:
            return load_tokenizer(self.pretrained)
        return load_lm_source(self.init_from, tokenizer_only=True)[1]

    def build_model(self) -> PreTrainedModel:
        """Create the LM (called once, from :meth:`configure_model`). Override to customise the network."""
        if self.tiny is not None:
            model = build_tiny_lm(self.tiny, self.tokenizer)
        elif self.pretrained is not None:
            model = load_pretrained_lm(self.pretrained, self.dtype_name, self.attn_implementation)
        else:
            model = load_lm_source(self.init_from, dtype=self.dtype_name)[0]
        model.train()  # from_pretrained returns eval mode, which Lightning keeps: dropout would silently stay off
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return apply_lora(model, self.lora) if self.lora is not None else model

    def configure_model(self) -> None:
        """Build the LM, then shard it with FSDP2 when the strategy is ``ModelParallelStrategy``.

        A strategy the module cannot train under (:func:`~ra3_lightning.strategies.check_strategy`) is refused first.
        """
        if self._trainer is not None:
            check_strategy(self)
        if self.model is None:
            self.model = self.build_model()
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            shard_lm(self.model, self.device_mesh)

    # ----------------------------------------------------------------------------------------- sampling
    def sample(
        self,
        prompt_ids: Tensor,  # [B, P]
        prompt_mask: Tensor,  # [B, P]
        backend: GenerationBackend,
        num_samples: int,
        max_new_tokens: int,
        step: int,
    ) -> Rollout:
        """``num_samples`` completions per prompt, sampled with an RNG seeded from ``(seed, step, rank)``."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + step * 1_009 + self.global_rank)
            return backend.generate(
                self.model,
                prompt_ids,
                prompt_mask,
                num_samples,
                max_new_tokens,
                self.eos_token_ids(),
                self.tokenizer.pad_token_id,
            )

    def eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS and every EOS id of the model's ``generation_config`` (one id or a list)."""
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = [self.tokenizer.eos_token_id, *([] if config_eos is None else eos_list(config_eos))]
        return eos_list([i for i in ids if i is not None])

    def decode(self, rollout: Rollout) -> list[str]:
        """The text of each completion, cut before a stop string."""
        ids = rollout.completion_ids.masked_fill(rollout.completion_mask == 0, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return texts if self.stop is None else [self.stop.cut(t) for t in texts]

    # ----------------------------------------------------------------------------------------- evaluation
    def sandbox_workers(self) -> int | None:
        """Sandbox workers of this rank: the CPUs this process may use divided by the trainer's ranks per node
        (``trainer.num_devices``); ``None`` without a trainer (the sandbox's own default then)."""
        if self._trainer is None:
            return None
        from ra3_lightning.sandbox.pool import default_workers

        return default_workers(ranks_on_node=self.trainer.num_devices)

    def evaluation_reward_fn(self) -> Any:
        """Hook: the reward evaluation scores with when ``evaluation.reward_fn`` is unset (a binary
        :class:`~ra3_lightning.rewards.SandboxReward` with :meth:`sandbox_workers` workers; RLVR: its own)."""
        from ra3_lightning.rewards import SandboxReward

        return SandboxReward(mode="binary", workers=self.sandbox_workers())

    def setup(self, stage: str) -> None:
        if self.evaluator is not None:
            self.evaluator.setup(self)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        """``ra3 test``: pass@k and the diagnostics on the data module's test tasks, logged as ``test/...``."""
        if self.evaluator is None:
            raise ValueError(
                f"{type(self).__name__} has no evaluation to test with: give model.evaluation (e.g. "
                "`--model.evaluation.num_samples 4 --model.evaluation.max_completion_length 256`)"
            )
        self.evaluator.step(self, batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.start(self, "test")

    def on_test_epoch_end(self) -> None:
        if self.evaluator is not None:
            self.evaluator.end(self, "test")

    def on_test_end(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()  # stop the sandbox workers

    # ----------------------------------------------------------------------------------------- optimisation
    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip to the module's ``optim.max_grad_norm`` (automatic optimisation; manual steps clip themselves).

        The trainer's ``gradient_clip_val`` still works when the module's knob is unset; setting both is an error.
        """
        own = getattr(self, "optim", None)
        if isinstance(own, Optim) and own.max_grad_norm is not None:
            if gradient_clip_val is not None:
                raise ValueError("set either model.optim.max_grad_norm or trainer.gradient_clip_val, not both")
            self.clip_to(optimizer, own)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_to(self, optimizer: Any, group: Optim) -> None:
        """Clip the global gradient norm to ``group.max_grad_norm`` (no-op when unset); manual steps call it."""
        if group.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=group.max_grad_norm, gradient_clip_algorithm="norm")

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TOKENIZER_KEY] = tokenizer_files(self.tokenizer)
        checkpoint[MODEL_CONFIG_KEY] = base_lm(self.model).config.to_dict()
        if self.lora is not None:
            checkpoint[LORA_KEY] = {"scaling": self.lora.scaling}

    def export_hf(self, out_dir: str | Path) -> Path | None:
        """Write ``self.model`` and the tokenizer with ``save_pretrained`` (loadable by ``transformers`` and vLLM).

        A LoRA adapter is merged into the weights: the directory is a plain model of the base architecture. Under
        FSDP2 every rank must call this (the full state dict is gathered collectively); rank 0 writes. Returns the
        directory on the writing rank, ``None`` elsewhere.
        """
        state_dict = full_state_dict(self.model)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        out = Path(out_dir)
        if self.lora is not None:
            state_dict = merged_state_dict(state_dict, self.lora.scaling)
        base_lm(self.model).save_pretrained(out, state_dict=state_dict)
        self.tokenizer.save_pretrained(out)
        return out


def reaches_logger(module: L.LightningModule) -> bool:
    """Whether this training step's ``self.log`` values reach the logger (every ``trainer.log_every_n_steps``
    steps, and the last), so that a metric costing a forward pass is computed only when someone will see it.

    True without a Trainer. Lightning has no public query for it: this reads the flag that its own
    ``LearningRateMonitor`` reads, in this one place.
    """
    if module._trainer is None:
        return True
    return bool(module.trainer._logger_connector.should_update_logs)


def shard_lm(model: torch.nn.Module, device_mesh: Any) -> None:
    """Apply FSDP2 ``fully_shard`` to every decoder block (``model._no_split_modules``), then to the root."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: torch.nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """A full (unsharded) CPU state dict of ``model``, whether or not it is FSDP2-sharded.

    Under FSDP2 this is a collective; the result is on rank 0 only unless ``all_ranks`` (then on every rank).
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    return {k: v.cpu() for k, v in get_model_state_dict(model, options=options).items()}


def load_lm_source(
    source: str, dtype: DType | None = None, tokenizer_only: bool = False
) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a ra3_lightning ``.ckpt`` file or a Hugging Face directory / hub id.

    A checkpoint rebuilds the architecture from the model config stored inside it — so it loads from any working
    directory, after the checkpoints it started from were moved or deleted, and without the hub — takes the
    tokenizer stored inside it and loads the ``model.*`` weights. Checkpoints written before the config was stored
    fall back to their hyper-parameters (``tiny``, ``pretrained`` or, recursively, ``init_from``).
    """
    if not str(source).endswith(".ckpt"):
        check_model_directory(source)
        tokenizer = load_tokenizer(source)
        return (None if tokenizer_only else load_pretrained_lm(source, dtype)), tokenizer
    ckpt = read_checkpoint(source, weights_only=False)
    if TOKENIZER_KEY not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{source}: a torch checkpoint, but not one written by an ra3 stage (no {TOKENIZER_KEY!r} / "
            f"'hyper_parameters'); give {EXPECTED_LM_SOURCE}"
        )
    tokenizer = tokenizer_from_files(ckpt[TOKENIZER_KEY])
    if tokenizer_only:
        return None, tokenizer
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if is_lora_state_dict(weights):
        if LORA_KEY not in ckpt:
            raise CheckpointError(f"{source}: LoRA weights but no {LORA_KEY!r} entry to merge them with")
        weights = merged_state_dict(weights, ckpt[LORA_KEY]["scaling"])
    if MODEL_CONFIG_KEY in ckpt:
        model = model_from_config(ckpt[MODEL_CONFIG_KEY], dtype or _weights_dtype(weights))
    else:
        model = _architecture_from_hparams(ckpt["hyper_parameters"], tokenizer, dtype, source)
    model.load_state_dict(weights, strict=True)
    return model, tokenizer


HF_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # besides any *.safetensors (or its index)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EXPECTED_LM_SOURCE = (
    "a Hugging Face model directory as `save_pretrained` and `ra3 export` write it (config.json; model.safetensors, "
    "pytorch_model.bin or a sharded *.index.json; tokenizer.json or tokenizer_config.json) or a .ckpt written by an "
    "ra3 stage"
)


def check_model_directory(source: str) -> None:
    """Raise :class:`~ra3_lightning.errors.CheckpointError` when ``source`` is a local path that is not a Hugging Face
    model directory (listing what is missing); a hub id (no such local path) passes."""
    path = Path(source).expanduser()
    if not path.exists():
        if str(source).startswith((".", "/", "~")):
            raise CheckpointError(f"{source}: no such file or directory (expected {EXPECTED_LM_SOURCE})")
        return
    if path.is_file():
        raise CheckpointError(f"{source}: a file, but not a .ckpt (expected {EXPECTED_LM_SOURCE})")
    names = sorted(p.name for p in path.iterdir())
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(n in HF_WEIGHT_FILES or n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        missing.append("weights")
    if not any(n in TOKENIZER_FILES for n in names):
        missing.append("tokenizer files")
    if missing:
        found = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "nothing"
        raise CheckpointError(
            f"{source}: not a Hugging Face model directory (no {', no '.join(missing)}; it holds: {found}); give "
            f"{EXPECTED_LM_SOURCE}"
        )


def model_from_config(config: dict[str, Any], dtype: DType | None = None) -> PreTrainedModel:
    """A randomly initialised causal LM of the architecture ``config`` (a ``PretrainedConfig.to_dict()``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ra3_lightning.models import torch_dtype

    values = dict(config)
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype(dtype)).train()


def _weights_dtype(weights: dict[str, torch.Tensor]) -> DType | None:
    """The dtype name of the first floating-point tensor of ``weights`` (the model is built in it)."""
    floating = next((v.dtype for v in weights.values() if v.is_floating_point()), None)
    return None if floating is None else str(floating).removeprefix("torch.")  # type: ignore[return-value]


def _architecture_from_hparams(
    hp: dict, tokenizer: PreTrainedTokenizerBase, dtype: DType | None, source: str
) -> PreTrainedModel:
    if hp.get("tiny"):
        return build_tiny_lm(tiny_config_from_dict(hp["tiny"]), tokenizer)
    if hp.get("pretrained"):
        from transformers import AutoConfig, AutoModelForCausalLM

        from ra3_lightning.models import torch_dtype

        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hp["pretrained"]), dtype=torch_dtype(dtype))
    if hp.get("init_from"):
        return load_lm_source(hp["init_from"], dtype)[0]
    raise CheckpointError(f"{source}: hyper-parameters name no model source (tiny / pretrained / init_from)")


def load_full_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into ``model``, which may be FSDP2-sharded (every rank passes it all)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        model.load_state_dict(state_dict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True))


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """``dst ← src`` for two copies of one architecture, either of them possibly FSDP2-sharded (collective then)."""
    with torch.no_grad():
        load_full_state_dict(dst, full_state_dict(src, all_ranks=True))
