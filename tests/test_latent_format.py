"""The latent format is a strategy object chosen from YAML: a second format changes the THINK tokens and the
rationale lines that the E-step writes, with no other change."""

from pathlib import Path

import pytest
import torch
from helpers.formats import SemicolonComment

from ra3_lightning.cli import RA3CLI
from ra3_lightning.estep import LatentFormat, insert_rationales, token_texts

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "estep_tiny.yaml")
TRACE = "def f(x):\n    y = x + 1\n    return y\n"


def test_format_renders_and_validates():
    assert insert_rationales(TRACE, {1: "add one"}, SemicolonComment()).text.splitlines()[1] == "    ; add one"
    slash = LatentFormat("// ")
    assert slash.comment_start == "//" and repr(slash) == "LatentFormat(comment_prefix='// ')"
    with pytest.raises(ValueError, match="needs a marker"):
        LatentFormat("  ")


def module_with_format(tmp_path: Path, class_path: str):
    overlay = tmp_path / "format.yaml"
    overlay.write_text(f"model:\n  init_args:\n    latent_format:\n      class_path: {class_path}\n")
    cli = RA3CLI(args=["-c", CONFIG, "-c", str(overlay), "--trainer.logger", "false"], run=False)
    cli.model.configure_model()
    return cli.model


def test_a_second_format_from_yaml_drives_the_e_step(tmp_path):
    module = module_with_format(tmp_path, "helpers.formats.SemicolonComment")
    assert isinstance(module.latent_format(), SemicolonComment)
    texts = token_texts(module.tokenizer)
    think = module.vocab.think.nonzero().flatten().tolist()
    assert think and all(texts[i].lstrip(" \t").startswith(";") for i in think)
    # an LM-head bias makes q all but certain to open a rationale with a ";" token at every boundary
    module.model.lm_head.bias = torch.nn.Parameter(torch.where(module.vocab.think, 20.0, 0.0))
    records = module.predict_step({"text": [TRACE, TRACE], "id": ["a", "b"]}, 0)
    lines = [r["text"][s:e] for r in records for s, e in r["rationale_spans"]]
    assert lines, "the biased q should have written rationales"
    assert all(line.lstrip(" \t").startswith(";") and line.endswith("\n") for line in lines), lines


def test_token_texts_are_decoded_once_per_tokenizer_and_again_after_new_tokens(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)  # the shared fixture must not gain tokens
    texts = token_texts(tok)
    assert texts == [tok.decode([i]) for i in range(len(tok))]
    texts.append("mutating the returned list changes nothing")
    assert token_texts(tok) == texts[:-1]
    tok.add_tokens(["<new_token>"])
    assert token_texts(tok)[-1] == "<new_token>" and len(token_texts(tok)) == len(texts)
