import os
from pathlib import Path

import pytest

# Modules whose tests share what a module fixture made (test_docs: the subprocesses it starts in the
# background; test_install: the wheel and its environment; test_resume and test_distributed: their
# reference runs; test_tensorboard_views: its runs and server) or one SLURM cluster (test_slurm, which
# `make test-all` runs alone, after the rest): under `-n auto`, each runs on one worker.
ONE_WORKER = (
    "test_docs.py", "test_install.py", "test_resume.py", "test_distributed.py", "test_tensorboard_views.py",
    "test_slurm.py",
)  # fmt: skip


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n auto`), each worker gets its own share of the CPU cores: a run's
    threads=auto then takes that share (runner.engine.device.usable_cores) instead of every core once
    per worker, which would oversubscribe them (torch's threads then wait on each other)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= count:
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count :: count])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n auto` hands out tests one by one to whichever worker is free (as --dist=load does), except
    the modules of ONE_WORKER, each handed out whole, first."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByTestOrModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in ONE_WORKER else nodeid

    return ByTestOrModule(config, log)


@pytest.fixture
def quick() -> list[str]:
    """Overrides for a run of seconds on the embedded digits."""
    return ["trainer.max_epochs=1", "data.batch_size=64", "model.channels=[8,16]", "model.hidden=[32]"]


@pytest.fixture(autouse=True)
def own_data_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test decodes into a cache of its own (runner.data.cache), never the user's ~/.cache/ablate;
    the runs it starts inherit it."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path_factory.mktemp("ablate-cache")))
