"""NTPModule: packed documents stay separate, the code-only loss mask, and a tiny `ra3 fit` run end to end."""

from pathlib import Path

import pytest
import torch

from ra3_lightning.cli import main
from ra3_lightning.losses import causal_lm_loss
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.ntp import NTPModule, lm_inputs
from ra3_lightning.optim import Optim

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "ntp_tiny.yaml"


def tb_scalars(log_dir: Path) -> dict[str, list[float]]:
    """All scalars in the TensorBoard event files under ``log_dir``, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_packed_documents_attend_only_to_themselves(tiny_lm):
    doc_a, doc_b = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([10, 11, 12, 13])
    packed = {
        "input_ids": torch.cat([doc_a, doc_b])[None],  # [1, 9]
        "position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]]),
        "attention_mask": torch.ones(1, 9, dtype=torch.long),
    }
    with torch.no_grad():
        alone = tiny_lm(input_ids=doc_b[None]).logits[0]  # [4, V]
        isolated = tiny_lm(**lm_inputs(packed)).logits[0, 5:]
        leaky = tiny_lm(**packed).logits[0, 5:]  # what passing the all-ones mask through would do
    torch.testing.assert_close(isolated, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_lm_inputs_keeps_mask_unless_padding_is_on_the_right():
    ids = torch.ones(2, 4, dtype=torch.long)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert "attention_mask" not in lm_inputs({"input_ids": ids, "attention_mask": right})
    assert lm_inputs({"input_ids": ids, "attention_mask": left})["attention_mask"] is left


@pytest.fixture
def tiny_cfg(code_jsonl) -> TinyLMConfig:
    return TinyLMConfig(hidden_size=32, intermediate_size=64, vocab_size=300, tokenizer_corpus=code_jsonl)


def test_loss_on_code_ignores_rationale_targets(tiny_cfg):
    torch.manual_seed(0)
    module = NTPModule(tiny=tiny_cfg, loss_on="code")
    module.configure_model()
    ids = torch.randint(0, 300, (2, 8))
    rationale = torch.zeros(2, 8, dtype=torch.bool)
    rationale[0, 2:5] = True  # three rationale tokens = three targets dropped
    batch = {"input_ids": ids, "labels": ids, "rationale_mask": rationale}
    loss, n = module.loss(batch)
    assert n.item() == 2 * 7 - 3
    logits = module(batch)
    expected, _ = causal_lm_loss(logits, ids.masked_fill(rationale, -100))
    torch.testing.assert_close(loss, expected)


def test_rejects_bad_options(tiny_cfg):
    with pytest.raises(ValueError, match="loss_on"):
        NTPModule(tiny=tiny_cfg, loss_on="comments")
    with pytest.raises(ValueError, match="lr > 0"):
        Optim(lr=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        Optim(max_grad_norm=0.0)


def test_print_config_shows_base_args(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(DEMO), "--print_config"])
    printed = capsys.readouterr().out
    for key in ("loss_on:", "warmup_steps:", "pretrained:", "init_from:", "tiny:", "gradient_checkpointing:"):
        assert key in printed


def test_demo_config_trains_logs_checkpoints_exports(code_jsonl, tmp_path, monkeypatch):
    """`ra3 fit -c configs/demo/ntp_tiny.yaml --data.path <jsonl>`: loss falls, events, checkpoint, HF export."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(DEMO), "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
          "--model.tiny.vocab_size", "300", "--data.max_length", "64", "--data.batch_size", "4",
          "--trainer.max_steps", "40", "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "ntp_tiny" / "version_0"
    scalars = tb_scalars(run)
    for tag in ("train/loss", "train/ppl", "lr", "perf/tokens_per_s", "val/loss", "val/ppl"):
        assert scalars.get(tag), f"{tag} not logged (got {sorted(scalars)})"
    losses = scalars["train/loss"]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert scalars["val/loss"][-1] < scalars["val/loss"][0]
    assert all(v > 0 for v in scalars["perf/tokens_per_s"])
    assert max(scalars["lr"]) == pytest.approx(3e-3, rel=0.05)  # warm-up reaches the peak of the config
    assert (tmp_path / "lightning_logs" / "ntp_tiny" / "checkpoints" / "last.ckpt").is_file()
    assert (run / "hf_model" / "config.json").is_file()
