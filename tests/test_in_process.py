"""The tests' `run` in the test process (tests/in_process.py): each run finds the process as a fresh one
would, and leaves it as it found it. A guard for the state that runner/ keeps per process: what a new
piece of it leaks shows here first."""

import logging
import os
import signal
import sys

import torch
from helpers import run_cli
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from in_process import is_users

from runner.engine import failures, lock

TINY = ["trainer.max_epochs=0", "data.train_size=64", "data.batch_size=32", "model.channels=[4]", "model.hidden=[]"]


def process_state() -> dict:
    """What a run may change in the process that runs it."""
    root, ablate = logging.getLogger(), logging.getLogger("ablate")
    return {
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "sys.argv": list(sys.argv),
        "root logger": (root.level, list(root.handlers)),
        "ablate logger": (ablate.level, list(ablate.handlers), ablate.propagate, ablate.disabled),
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)},
        "torch threads": torch.get_num_threads(),
        "Hydra's classes": {cls: dict(vars(cls)) for cls in (Hydra, ConfigLoaderImpl)},
        "GlobalHydra": GlobalHydra.instance().is_initialized(),
        "held": dict(lock._held),
        "users' modules": {name for name, module in sys.modules.items() if is_users(module)},
    }


def test_runs_leave_the_process_as_they_found_it(tmp_path):
    with lock.held(tmp_path / "mine"):  # the test process's own holding outlives the runs
        before = process_state()
        assert run_cli("--help").returncode == 0  # patches Hydra's config loader for its answer
        assert run_cli("optimizer.lr=abc", f"hydra.run.dir={tmp_path / 'refused'}").returncode == 2
        missing = run_cli("data=mnist", f"data.root={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'held'}")
        assert missing.returncode == 2  # refused while built, with its run directory held (and its log open)
        assert run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path).returncode == 0
        assert process_state() == before
        assert [p.parent.name for p in tmp_path.rglob(lock.HOLDER_FILE)] == ["mine"]  # the runs': released


def test_a_run_exits_as_a_fresh_process_after_a_sweep_with_a_failed_job(tmp_path, monkeypatch):
    """runner.engine.failures.exit_code is the process's: a sweep with a failed job leaves it at 1, and
    main() exits with it; the next run of the process starts from 0, as a process of its own does."""
    monkeypatch.setattr(failures, "exit_code", failures.FAILED_EXIT)
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr


def test_each_run_imports_the_users_module_of_its_own_folder(tmp_path):
    """Two users' folders, each with its own my_act.py: a run imports the one of its folder, not the one
    an earlier run of the process imported."""
    for keys in ("count", "rate"):
        folder = tmp_path / keys
        folder.mkdir()
        (folder / "my_act.py").write_text(f"def Act({keys}=1):\n    pass\n")
        result = run_cli("activation._target_=my_act.Act", "+activation.widht=3", cwd=folder)
        assert (result.returncode, result.stderr) == (
            2,
            f"error: activation.widht=3 is not allowed; allowed: a key of activation ({keys})\n",
        )
