"""The shipped training configs keep fp32 master weights, so a fine-tuning-sized AdamW step changes the weights.

At lr 1e-6 a bf16 weight of magnitude 0.02 only moves if the update exceeds half its ulp (~6e-5): under
``bf16-true`` + bf16 weights plain AdamW changes (almost) none of them. The same one-step fit under the precision
and dtype the stage configs ship must change (almost) all of them — and NTP and the RA3 arms must train alike.
"""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from ra3_lightning.models import torch_dtype
from ra3_lightning.optim import Optim, low_precision_warning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING = ["ntp.yaml", "estep.yaml", "ra3_em.yaml", "rlvr.yaml"]


def shipped(name: str) -> tuple[str, str]:
    """``(trainer.precision, model.init_args.dtype)`` of a stage config."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    return config["trainer"]["precision"], config["model"]["init_args"]["dtype"]


class OneLayer(L.LightningModule):
    """A linear layer with weights of magnitude ~0.02 in ``dtype``, trained by the modules' own optimizer group."""

    def __init__(self, dtype: torch.dtype, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(64, 64, bias=False).to(dtype)
        with torch.no_grad():
            self.layer.weight.copy_(0.02 * torch.randn(64, 64).sign())
        self.initial = self.layer.weight.detach().clone()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x.to(self.layer.weight.dtype)).float().pow(2).mean()

    def configure_optimizers(self):
        return Optim(lr=self.lr).build(self.named_parameters(), total_steps=1)


def fraction_changed(precision: str, dtype: str, lr: float = 1e-6) -> float:
    module = OneLayer(torch_dtype(dtype), lr)
    data = torch.utils.data.TensorDataset(torch.randn(8, 64))
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return (module.layer.weight.detach() != module.initial).float().mean().item()


@pytest.mark.parametrize("name", TRAINING)
def test_a_1e_minus_6_step_changes_the_weights_under_the_shipped_precision(name):
    precision, dtype = shipped(name)
    assert fraction_changed(precision, dtype) > 0.99, f"{name}: {precision} + {dtype} weights lose 1e-6 updates"


def test_bf16_weights_lose_a_1e_minus_6_step():
    """The failure the shipped configs avoid (and what makes the test above able to fail)."""
    with pytest.warns(UserWarning, match="rounds away"):
        assert fraction_changed("bf16-true", "bfloat16") < 0.01


def test_ntp_and_ra3_arms_train_in_the_same_precision():
    assert len({shipped(name) for name in TRAINING}) == 1


def test_low_precision_warning_names_the_fix_only_for_16_bit_weights():
    assert low_precision_warning([torch.zeros(2, dtype=torch.float32)], 1e-6) is None
    assert "bf16-mixed" in low_precision_warning([torch.zeros(2, dtype=torch.bfloat16)], 1e-6)
