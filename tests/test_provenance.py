"""Provenance (runner.provenance) and `rerun` (runner.cli.rerun): every run records what produced it
before it trains, and one command makes it again from its directory alone and says whether it matches."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_cli

from runner import provenance
from runner.cli import rerun

TINY = [
    "trainer.max_epochs=1",
    "data.train_size=200",
    "data.batch_size=50",
    "model.channels=[4,8]",
    "model.hidden=[16]",
]
MY_MODEL = """import torch


class Tiny(torch.nn.Module):
    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    def forward(self, x):
        return self.net(x)
"""


def rerun_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`rerun *args`, as a user types it (its own process: it starts `run` in one of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "runner.cli.rerun", *args], cwd=cwd or ROOT, capture_output=True, text=True, check=False
    )


def test_a_run_records_its_code_packages_and_machine_before_it_trains(tmp_path):
    result = run_cli(*TINY, "optimizer.lr=1e30", f"hydra.run.dir={tmp_path / 'run'}")  # diverges: a run that fails
    record = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged", result.stderr
    if (ROOT / ".git").exists():
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout
        assert record["ablate"]["commit"] == commit.strip()
        assert isinstance(record["ablate"]["dirty"], bool)
        diff = tmp_path / "run" / "provenance" / "ablate.diff"
        assert diff.exists() == record["ablate"]["dirty"]
    import torch

    assert (
        record["packages"]["torch"] == torch.__version__.split("+")[0]
        or record["packages"]["torch"] == torch.__version__
    )
    assert record["machine"]["cpu"]["cores"] >= 1 and record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["user_modules"] == {} and record["config_dir"] is None


def test_a_rerun_from_its_directory_is_bitwise_identical(tmp_path):
    made = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert made.returncode == 0, made.stderr
    commit = provenance.read(tmp_path / "run")["ablate"]["commit"]
    assert "Made with:     ablate " + (commit[:12] if commit else "") in made.stdout  # how to reproduce it
    assert f"again: rerun {tmp_path / 'run'}" in made.stdout
    again = rerun_cli(str(tmp_path / "run"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert f"rerun of {tmp_path / 'run'} into {tmp_path / 'again'}" in again.stdout
    verdict = again.stdout.strip().splitlines()[-1]
    assert verdict.startswith("  verdict: bitwise identical (test accuracy ")


def test_a_run_that_ended_is_skipped_with_its_record_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*TINY, f"hydra.run.dir={run_dir}").returncode == 0
    first = json.loads((run_dir / "provenance.json").read_text())
    first["ablate"]["commit"] = "0" * 40  # as if the run had been made at another commit
    (run_dir / "provenance.json").write_text(json.dumps(first))
    again = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert f"completed already in {run_dir}; skipped" in again.stdout + again.stderr
    assert json.loads((run_dir / "provenance.json").read_text()) == first  # the record of what made it


@pytest.mark.slow  # reruns in processes of their own: `rerun` starts `run`
def test_a_run_made_from_another_checkout_reruns_with_the_code_its_provenance_was_checked_against(tmp_path):
    commit = provenance.code()[0]["commit"]
    if commit is None:
        pytest.skip("this checkout is not a git repository: its code has no commit to tell it by")
    other = tmp_path / "other"  # another checkout of ablate, without a commit
    for part in ("runner", "models", "optim", "hydra_plugins", "configs"):
        shutil.copytree(ROOT / part, other / part, ignore=shutil.ignore_patterns("__pycache__"))
    made = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=other, process=True)
    assert made.returncode == 0, made.stderr
    assert provenance.read(tmp_path / "run")["ablate"]["commit"] is None  # the other checkout's code made it
    again = rerun_cli(str(tmp_path / "run"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert f"ablate's commit: None then, {commit} now" in again.stdout  # said before it trains
    assert provenance.read(tmp_path / "again")["ablate"]["commit"] == commit  # this checkout's code made it again


@pytest.mark.slow  # reruns in processes of their own: `rerun` starts `run`
def test_after_a_user_module_is_edited_the_rerun_names_it_before_training(tmp_path):
    project = tmp_path / "project"
    (project / "configs" / "model").mkdir(parents=True)
    (project / "my_model.py").write_text(MY_MODEL)
    (project / "configs" / "model" / "tiny.yaml").write_text("_target_: my_model.Tiny\n")
    made = run_cli("--config-dir", "configs", "model=tiny", *TINY[:3], f"hydra.run.dir={tmp_path / 'run'}", cwd=project)
    assert made.returncode == 0, made.stderr
    record = provenance.read(tmp_path / "run")
    assert list(record["user_modules"]) == ["my_model"]
    assert record["user_modules"]["my_model"]["file"] == str((project / "my_model.py").resolve())
    assert (tmp_path / "run" / "provenance" / "sources" / "my_model.py").read_text() == MY_MODEL
    assert record["config_dir"]["files"] == {
        "model/tiny.yaml": provenance.sha256(project / "configs" / "model" / "tiny.yaml")
    }

    (project / "my_model.py").write_text(MY_MODEL.replace("return self.net(x)", "return self.net(2 * x)"))
    again = rerun_cli(str(tmp_path / "run"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    changed = next(i for i, line in enumerate(lines) if "user module my_model" in line)
    assert "changed since" in lines[changed]
    assert changed < next(i for i, line in enumerate(lines) if "verdict:" in line)
    assert "verdict: differs: largest weight difference" in again.stdout


@pytest.mark.slow  # reruns in processes of their own: `rerun` starts `run`
def test_a_sweep_reruns_job_by_job_and_compares_its_summary(tmp_path):
    made = run_cli("-m", "model=plain,bn", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert made.returncode == 0, made.stderr
    again = rerun_cli(str(tmp_path / "sweep"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("verdict: bitwise identical") == 2
    assert "2 of 2 runs bitwise identical" in again.stdout
    assert "Made with ablate " in (tmp_path / "sweep" / "summary.md").read_text()
    assert "summary: the same test accuracies" in again.stdout


@pytest.mark.slow  # reruns in processes of their own: `rerun` starts `run`
def test_a_directory_from_before_provenance_still_reruns_saying_what_it_lacks(tmp_path):
    made = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert made.returncode == 0, made.stderr
    (tmp_path / "run" / "provenance.json").unlink()
    shutil.rmtree(tmp_path / "run" / "provenance", ignore_errors=True)
    again = rerun_cli(str(tmp_path / "run"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert "no provenance.json: the run was made before ablate recorded what produced it" in again.stdout
    assert "verdict: bitwise identical" in again.stdout


def test_differences_name_the_commit_packages_and_cpu_flags():
    now, _ = provenance.collect({}, None)
    then = json.loads(json.dumps(now))
    then["ablate"].update(commit="0" * 40, dirty=False, diff_sha256=None)
    then["packages"]["torch"] = "1.0.0"
    then["machine"]["cpu"]["flags"] = ["avx2"]
    lines = provenance.differences(then, now)
    assert (
        any(line.startswith(f"ablate's commit: {'0' * 40} then") for line in lines) or now["ablate"]["commit"] is None
    )
    assert any(line.startswith("packages (1): torch 1.0.0 → ") for line in lines)
    assert any(line.startswith("CPU: ") for line in lines)


@pytest.mark.parametrize("bad", ["nowhere"])
def test_rerun_refuses_a_path_without_runs(tmp_path, bad):
    result = rerun_cli(str(tmp_path / bad))
    assert result.returncode == 2
    assert result.stderr == f"rerun: PATH={tmp_path / bad} holds no run directory; allowed: a run or sweep directory\n"


def test_rerun_reads_the_overrides_hydra_saved(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=bn\n- seed=3\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    cwd: /somewhere\n    config_sources:\n    - {path: /somewhere/configs, schema: file, provider: command-line}\n"
    )
    assert rerun.recorded_run(run_dir) == (["model=bn", "seed=3"], Path("/somewhere"), Path("/somewhere/configs"))
