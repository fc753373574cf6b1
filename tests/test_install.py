"""ablate installed the way a researcher adds a tool to an environment of their own: the wheel that
`pip wheel` builds from the working tree, installed (not editable) into a fresh virtual environment,
then `run` and `report` typed in a project folder outside the repository (examples/own_parts).

The fresh environment reuses the packages already installed here (torch and the rest): a .pth file
in its site-packages names this environment's site-packages. A plain path line does not process the
.pth files of that folder, so this environment's editable install of the checkout stays out, and the
wheel's own copy of ablate is the one that runs. pip installs the wheel with no index and no config
(no local wheels either), so the install succeeds only where pyproject.toml's ranges accept the
versions installed here, and it must install nothing but ablate.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, cli_env

EXAMPLE = ROOT / "examples" / "own_parts"
CONFIGS = ROOT / "configs"  # the checkout's own
WHEEL_CONFIGS = "runner/configs"  # where pyproject.toml's package-dir puts configs/ in the wheel
PLUGINS = ("hydra_plugins/ablate_tune/tune_sweeper.py", "hydra_plugins/ablate_slurm/slurm_launcher.py")


def source_tree(dest: Path) -> Path:
    """The files of the working tree that git would keep (tracked, or new and not ignored), copied to
    `dest`: setuptools writes build/ and ablate.egg-info beside the sources it builds, here not in
    the repository."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not in it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def pip(*args: str) -> subprocess.CompletedProcess:
    """This environment's pip with no config file and no local wheels: only what the command names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree (`pip wheel --no-deps`, setuptools from this environment)."""
    work = tmp_path_factory.mktemp("build")
    source = source_tree(work / "ablate")
    result = pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("ablate-*.whl")
    return built


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed, on top of this environment's packages."""
    venv = tmp_path_factory.mktemp("user-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(python_of(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_reuse_installed_packages.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    result = pip("--python", str(venv / "bin" / "python"), "install", "--no-index", str(wheel))
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_names(result.stdout) == ["ablate"], result.stdout  # every dependency was met already
    return venv


def installed_names(pip_output: str) -> list[str]:
    """The distributions pip's "Successfully installed a-1.0 b-2.0" line names: ["a", "b"]."""
    (line,) = [line for line in pip_output.splitlines() if line.startswith("Successfully installed ")]
    return [name.rsplit("-", 1)[0] for name in line.split()[2:]]


def python_of(venv: Path, code: str) -> str:
    """What `code` prints, run by the environment's python in a folder of no project."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=venv, capture_output=True, text=True, check=True,
        env=user_env(), timeout=120,
    )  # fmt: skip
    return result.stdout.strip()


def user_env() -> dict:
    """The environment a user's shell gives the command: no PYTHONPATH, no virtual environment active."""
    return {k: v for k, v in cli_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's project folder outside the repository: configs/ (model/my_net.yaml ...) and my_parts.py."""
    folder = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return folder


def command(venv: Path, project: Path, program: str, *args: str) -> subprocess.CompletedProcess:
    """`program *args` (the environment's console script) typed in the project folder."""
    return subprocess.run(
        [str(venv / "bin" / program), *args], cwd=project, env=user_env(), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def test_the_wheel_holds_every_config_and_the_hydra_plugins(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"{WHEEL_CONFIGS}/{p.relative_to(CONFIGS).as_posix()}" for p in CONFIGS.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert {f"{WHEEL_CONFIGS}/hydra/launcher/slurm.yaml", f"{WHEEL_CONFIGS}/hydra/sweeper/tune.yaml"} <= names
    assert set(PLUGINS) <= names
    assert not any(n.startswith("configs/") for n in names)  # no top-level `configs` package in site-packages


def test_the_environment_runs_the_wheels_copy_not_the_checkout(env):
    where = json.loads(python_of(env, (
        "import json, sys, runner, hydra_plugins.ablate_tune as t; from runner.config import builtin;"
        "print(json.dumps([runner.__file__, t.__file__, str(builtin.configs_dir()), sys.path]))"
    )))  # fmt: skip
    site = python_of(env, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    assert all(Path(p).is_relative_to(site) for p in where[:3]), where[:3]
    assert str(ROOT) not in where[3]  # the editable install's path did not leak in
    assert not (ROOT / "runner" / "configs").exists()  # the checkout keeps configs/ at the top level only


def test_help_lists_the_built_in_groups_and_presets_beside_the_users(env, project):
    result = command(env, project, "run", "--config-dir", "configs", "--help")
    assert result.returncode == 0, result.stderr
    groups = dict(line.split(": ", 1) for line in result.stdout.split("== Config ==")[0].splitlines() if ": " in line)
    assert {"plain", "bn", "residual", "my_net"} <= set(groups["model"].split(", "))
    assert {"quick", "optimizers"} <= set(groups["experiment"].split(", "))


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["experiment=quick", "--cfg", "hydra"], "model: plain,bn,residual"),  # a preset's sweep
        (["hydra/sweeper=tune", "--cfg", "hydra"], "hydra_plugins.ablate_tune.tune_sweeper.TuneSweeper"),
        (["hydra/launcher=slurm", "--cfg", "hydra"], "submitit_folder:"),
        (["--config-dir", "configs", "model=my_net", "--cfg", "job"], "_target_: my_parts.TinyNet"),
    ],
)
def test_the_built_in_presets_and_hydra_groups_compose(env, project, args, shown):
    result = command(env, project, "run", *args)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout


@pytest.mark.slow  # about 10 s on 2 cores; the tests above check the wheel and its environment in about 5 s
def test_a_sweep_of_a_users_model_beside_a_built_in_one_and_its_report(env, project):
    result = command(
        env, project, "run", "--config-dir", "configs", "-m", "model=plain,my_net", "trainer.max_epochs=1",
        "data.train_size=256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (sweep,) = (project / "outputs" / "sweeps").iterdir()
    for job, target in (("model=plain", "models.PlainNet"), ("model=my_net", "my_parts.TinyNet")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == 1, metrics["status"]
        assert f"_target_: {target}" in (sweep / job / ".hydra" / "config.yaml").read_text()
    hydra_yaml = (sweep / "model=plain" / ".hydra" / "hydra.yaml").read_text()
    assert f"{WHEEL_CONFIGS}\n" in hydra_yaml and str(CONFIGS) not in hydra_yaml  # composed from the wheel's copy
    assert variants(sweep / "summary.md") == {"model=plain", "model=my_net"}

    report = command(env, project, "report", str(sweep.relative_to(project)), "--out", "comparison")
    assert report.returncode == 0, report.stderr
    assert variants(project / "comparison" / "summary.md") == {"model=plain", "model=my_net"}


def variants(summary: Path) -> set[str]:
    """The variants of a summary.md table."""
    rows = [line for line in summary.read_text().splitlines() if line.startswith("| ")]
    return {row.split(" | ")[0].strip("|* ") for row in rows} - {"variant"}
