"""Every YAML under configs/ parses through the real CLI (``--print_config``: parsed and validated, nothing built)."""

from pathlib import Path

import pytest

from ra3_lightning.cli import PACKAGED_CONFIGS, main, resolve_config_paths

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(CONFIG_DIR.rglob("*.yaml"))


def referrers(fragment: Path) -> list[Path]:
    """Configs that fill a group from ``fragment`` (a value naming it, e.g. ``tiny: tiny_lm.yaml``)."""
    return [p for p in ALL_YAML if p != fragment and f": {fragment.name}" in p.read_text()]


FRAGMENTS = [p for p in ALL_YAML if referrers(p)]  # e.g. configs/demo/tiny_lm.yaml: one group, not a run
CONFIGS = [p for p in ALL_YAML if p not in FRAGMENTS]


def subcommand_for(path: Path) -> str:
    """The subcommand named in the config's header (``# ra3 test -c ...``), ``fit`` by default."""
    for line in path.read_text().splitlines()[:15]:
        for sub in ("fit", "validate", "test", "predict", "demo"):
            if f"ra3 {sub} " in line:
                return sub
    return "fit"


def test_there_are_configs():
    assert CONFIGS, f"no YAML under {CONFIG_DIR}"


def config_stack(path: Path) -> list[Path]:
    """The ``-c`` files of the config's first launch command if it names this file among several (an overlay
    such as ``configs/lora.yaml`` parses on top of the config it overlays), else the file alone."""
    for line in path.read_text().splitlines()[:15]:
        words = line.lstrip("# ").split()
        if words[:1] == ["ra3"]:
            stack = [CONFIG_DIR.parent / words[i + 1] for i, w in enumerate(words[:-1]) if w == "-c"]
            return stack if len(stack) > 1 and path in stack else [path]
    return [path]


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_config_parses(path, capsys):
    stack = [arg for config in config_stack(path) for arg in ("-c", str(config))]
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand_for(path), *stack, "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    if subcommand_for(path) == "demo":  # a pipeline config (ra3_lightning.pipeline), not a LightningCLI one
        assert "model:" in printed and "midtrain:" in printed
        return
    assert "model:" in printed and "class_path" in printed


def test_fragments_fill_a_group_of_configs_that_parse():
    """A fragment is parsed as part of every config that names it (those are in CONFIGS, so they parse above)."""
    assert FRAGMENTS, "configs/demo/tiny_lm.yaml should be shared by the tiny demo configs"
    for fragment in FRAGMENTS:
        assert all(p in CONFIGS for p in referrers(fragment)), fragment


def test_a_fragment_fills_the_group_it_is_named_for(capsys):
    with pytest.raises(SystemExit):
        main(
            ["fit", "-c", str(CONFIG_DIR / "demo" / "ntp_tiny.yaml"), "--model.tiny.num_layers", "3", "--print_config"]
        )
    printed = capsys.readouterr().out
    assert "hidden_size: 64" in printed and "num_layers: 3" in printed  # from tiny_lm.yaml; the flag still wins


def test_every_config_has_a_launch_command():
    for path in CONFIGS:
        head = "\n".join(path.read_text().splitlines()[:15])
        assert "ra3 " in head, f"{path}: header comment should give the exact launch command"


def test_missing_config_path_falls_back_to_packaged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    some = CONFIGS[0].relative_to(CONFIG_DIR)
    resolved = resolve_config_paths(["fit", "-c", f"configs/{some}"])
    assert resolved[2] == str(PACKAGED_CONFIGS / some)


def test_default_root_dir_moves_every_relative_output(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ra3_lightning.cli import RA3CLI

    config = str(CONFIG_DIR / "demo" / "ra3_em_tiny.yaml")
    cli = RA3CLI(args=["-c", config, "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    checkpoint = next(c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint))
    outputs = [cli.trainer.logger.log_dir, checkpoint.dirpath, cli.model.hparams.work_dir]
    assert outputs == [
        str(tmp_path / "run" / "lightning_logs" / "ra3_em_tiny" / "version_0"),
        str(tmp_path / "run" / "lightning_logs" / "ra3_em_tiny" / "checkpoints"),
        str(tmp_path / "run" / "lightning_logs" / "ra3_em_tiny" / "em"),
    ]
    plain = RA3CLI(args=["-c", config], run=False)  # no root given: the config's paths as written
    assert plain.model.hparams.work_dir == "lightning_logs/ra3_em_tiny/em"


def test_default_root_dir_moves_the_samples_file_of_the_evaluation_group(tmp_path):
    from ra3_lightning.cli import RA3CLI

    config = str(CONFIG_DIR / "demo" / "rlvr_tiny.yaml")
    args = ["-c", config, "--model.evaluation.samples_path", "out/s.jsonl", "--trainer.logger", "false"]
    cli = RA3CLI(args=[*args, "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert cli.model.evaluation.samples_path == str(tmp_path / "run" / "out" / "s.jsonl")


TRAINING_CONFIGS = ["ntp.yaml", "estep.yaml", "ra3_em.yaml", "rlvr.yaml"]


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_training_configs_pin_their_checkpoint_directory(name):
    """A restart logs to a new ``version_<n>``: ``--ckpt_path last`` finds ``last.ckpt`` only in a fixed directory,
    written by a checkpoint callback whose final ``last`` resumes exactly."""
    import yaml

    callbacks = yaml.safe_load((CONFIG_DIR / name).read_text())["trainer"]["callbacks"]
    checkpoints = [c for c in callbacks if c["class_path"].endswith("Checkpoint")]
    assert [c["class_path"] for c in checkpoints] == ["ra3_lightning.callbacks.ResumableCheckpoint"], name
    args = checkpoints[0]["init_args"]
    assert args["save_last"] and args["dirpath"] == f"lightning_logs/{Path(name).stem}/checkpoints", args
