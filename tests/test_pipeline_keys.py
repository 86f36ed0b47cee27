"""The ``ra3`` section of ``ra3 demo`` (RA3Module's groups, passed to the ``ra3`` stage key by key) and the old flat
``midtrain.*`` keys it replaced: each still sets its new key, with a FutureWarning that names it, so quoted commands
run the same experiment; an old key that contradicts its new key raises."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from ra3_lightning.pipeline.old_keys import MOVED
from ra3_lightning.pipeline.spec import Paths, RA3Spec
from ra3_lightning.pipeline.stages import parse_config, ra3_run

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ["-c", str(ROOT / "configs" / "demo" / "pipeline_full.yaml")]
OLD_VALUES = {  # old key -> a value other than the default, and flags both sides need (choose=best needs G >= 2)
    "midtrain.num_generations": ("3", []),
    "midtrain.think_cost": ("100", []),
    "midtrain.max_latent_tokens": ("6", []),
    "midtrain.temperature": ("1.5", []),
    "midtrain.act_likelihood": ("marginal", []),
    "midtrain.hindsight_lines": ("2", []),
    "midtrain.annotate_choose": ("best", ["--ra3.annotation.num_generations", "4"]),
    "midtrain.annotate_samples": ("4", []),
    "midtrain.annotate_batch_size": ("8", []),
    "midtrain.q_lr": ("1e-3", []),
}


def ra3_flags(argv: list[str], tmp_path: Path) -> dict:
    return ra3_run(parse_config([*PIPELINE, *argv]), Paths(tmp_path)).flags


def test_every_old_key_is_covered():
    assert sorted(OLD_VALUES) == sorted(MOVED)


@pytest.mark.parametrize("old", sorted(OLD_VALUES))
def test_an_old_key_sets_its_new_key_with_a_warning(old, tmp_path):
    value, both = OLD_VALUES[old]
    new = ra3_flags([*both, f"--{MOVED[old]}", value], tmp_path)
    with pytest.warns(FutureWarning, match=f"{old} is now {MOVED[old]}"):
        assert ra3_flags([*both, f"--{old}", value], tmp_path) == new
    assert new != ra3_flags(both, tmp_path)  # the value does change a flag


def test_the_quoted_ablation_commands_run_the_same_experiment(tmp_path):
    old = ["--midtrain.annotate_choose", "best", "--midtrain.annotate_samples", "4", "--midtrain.think_cost", "100"]
    with pytest.warns(FutureWarning):
        flags = ra3_flags(old, tmp_path)
    new = ["--ra3.annotation.choose", "best", "--ra3.annotation.num_generations", "4", "--ra3.latent.think_cost", "100"]
    assert flags == ra3_flags(new, tmp_path)
    assert (flags["model.annotation.choose"], flags["model.annotation.num_generations"]) == ("best", 4)
    assert flags["model.latent.think_cost"] == 100.0 and flags["model.latent.max_latent_tokens"] == 8


def test_an_old_key_in_a_pipeline_yaml_is_read(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "demo" / "pipeline.yaml").read_text())
    config["midtrain"] |= {"think_cost": 0.2, "q_lr": 1.0e-3}
    del config["ra3"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "tiny_lm.yaml").write_text((ROOT / "configs" / "demo" / "tiny_lm.yaml").read_text())
    with pytest.warns(FutureWarning, match="midtrain.q_lr is now ra3.optim.lr"):
        cfg = parse_config(["-c", str(tmp_path / "old.yaml")])
    assert cfg.ra3.latent["think_cost"] == 0.2 and cfg.ra3.optim == {"lr": 1.0e-3}


def test_an_old_key_that_contradicts_its_new_key_raises():
    with pytest.raises(ValueError, match="midtrain.think_cost is the old name of ra3.latent.think_cost, set only"):
        parse_config([*PIPELINE, "--ra3.latent.think_cost", "0.2", "--midtrain.think_cost", "100"])
    with pytest.raises(ValueError, match="set only ra3.annotation.num_generations"):
        parse_config([*PIPELINE, "--ra3.annotation.num_generations", "2", "--midtrain.annotate_samples", "4"])


def test_print_config_shows_an_old_key_in_its_new_place(capsys):
    from ra3_lightning.cli import main

    with warnings.catch_warnings(), pytest.raises(SystemExit):
        warnings.simplefilter("ignore", FutureWarning)
        main(["demo", *PIPELINE, "--midtrain.think_cost", "100", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ra3"]["latent"]["think_cost"] == 100.0 and printed["ra3"]["latent"]["max_latent_tokens"] == 8
    assert not {old.split(".")[1] for old in MOVED} & set(printed["midtrain"])


def test_the_ra3_section_passes_any_field_of_a_group_and_only_those_given(tmp_path):
    flags = ra3_flags(["--ra3.latent.engine", "kv", "--ra3.annotation.shard_size", "32"], tmp_path)
    assert flags["model.latent.engine"] == "kv" and flags["model.annotation.shard_size"] == 32
    assert "model.latent.logprob_chunk_size" not in flags and "model.annotation.score_fraction" not in flags
    whole = ra3_flags(["--ra3.latent", "{think_cost: 0.2}"], tmp_path)  # a group given whole replaces the default
    assert {k: v for k, v in whole.items() if k.startswith("model.latent.")} == {"model.latent.think_cost": 0.2}


def test_a_bad_ra3_group_names_the_group_and_its_fields():
    with pytest.raises(ValueError, match=r"ra3.latent: \['think_costs'\] not a field of LatentRL \(think_cost, "):
        RA3Spec(latent={"think_costs": 0.1})
    with pytest.raises(ValueError, match="ra3.annotation: .*choose"):
        RA3Spec(annotation={"choose": "worst"})
    with pytest.raises(ValueError, match="ra3.latent: .*max_latent_tokens=1 must be >= 2"):
        RA3Spec(latent={"max_latent_tokens": 1})
    assert RA3Spec(latent={"think_cost": 1}).latent == {"think_cost": 1.0}  # typed as LatentRL types it
