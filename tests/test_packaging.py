"""The built wheel installs ``callbacks/`` as ``ra3_lightning.callbacks`` and ships the configs.

Builds the wheel, installs it (no dependencies) into a throwaway venv whose only other packages come from this
environment's site-packages via a ``.pth`` path line — so the editable install of the checkout is NOT visible —
and imports from a directory outside the checkout.
"""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return next(out.glob("ra3_lightning-*.whl"))


def test_wheel_installs_callbacks_and_configs(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies (torch, lightning, ...) from this environment, appended after the venv's own site-packages.
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import ra3_lightning, ra3_lightning.callbacks, ra3_lightning.cli as cli; "
        "print(ra3_lightning.__file__); print(ra3_lightning.callbacks.__file__); "
        "print(sorted(p.name for p in cli.PACKAGED_CONFIGS.rglob('*.yaml')))"
    )
    out = subprocess.run([py, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    pkg_file, callbacks_file, configs = out.splitlines()
    assert pkg_file.startswith(str(site)) and callbacks_file.startswith(str(site)), out
    shipped = sorted(p.name for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs == str(shipped)
