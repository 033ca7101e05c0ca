"""An installed Cairn keeps its state out of site-packages and ships no federation (issue 18).

The package is really installed (``pip install --no-deps --target``, from this tree), and its
defaults are read from that copy, not from the source checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import REPO_ROOT, Settings, default_state_dir, source_checkout
from tests.samples import REPO

PACKAGED = ("pyproject.toml", "README.md", "broker", "schemas", "adapters", "keys", "gateway")
SHOW = (
    "import json, broker.config as c; s = c.Settings(); "
    "print(json.dumps({'module': c.__file__, 'state': str(s.state_dir), "
    "'federation': str(s.federation_dir)}))"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the packages: never from (or into) the tree's own build/ folder.
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    return target


def test_the_source_checkout_keeps_its_development_defaults() -> None:
    assert source_checkout()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert default_state_dir() == REPO_ROOT / ".cairn"
    assert settings.federation_dir == REPO_ROOT / "deploy" / "federation"


def test_an_installed_package_keeps_state_out_of_site_packages(
    installed: Path, tmp_path: Path
) -> None:
    env = {
        "PYTHONPATH": str(installed),
        "HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
        "PYTHONSAFEPATH": "1",  # not the working directory's broker/ (there is none: cwd below)
    }
    shown = subprocess.run(
        [sys.executable, "-c", SHOW], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    got = json.loads(shown.stdout)
    assert got["module"].startswith(str(installed))  # the installed copy answered
    assert got["state"] == str(tmp_path / "home" / ".local" / "state" / "cairn")
    assert not got["state"].startswith(str(installed))
    assert got["federation"] == "/etc/cairn/federation"
    xdg = subprocess.run(
        [sys.executable, "-c", SHOW], env={**env, "XDG_STATE_HOME": str(tmp_path / "xdg")},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(xdg.stdout)["state"] == str(tmp_path / "xdg" / "cairn")


def test_an_installed_serve_says_where_to_put_the_federation(
    installed: Path, tmp_path: Path
) -> None:
    env = {
        "PYTHONPATH": str(installed),
        "HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
        "PYTHONSAFEPATH": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no federation file at /etc/cairn/federation/agencies.yaml" in result.stderr
    assert "CAIRN_FEDERATION_DIR" in result.stderr
