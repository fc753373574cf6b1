"""`run *args` in the test process: the same main() as `python -m runner`, without the 2 s of a fresh
interpreter's imports (torch, Hydra). Whatever a run changes that would end with its process is put
back afterwards, so that the next run, and the next test, find the process as a fresh one would:

- the environment, the current directory, sys.argv, sys.path, the warnings' filters;
- the modules of the user's folder (my_parts.py in a test's folder is not the next test's);
- logging's loggers and handlers (Hydra configures them per run, and opens run.log);
- signal handlers, the excepthooks, torch's threads, random generators and cuDNN flags;
- Hydra's global state and the methods patched on its classes, and the state ablate keeps per process
  (`RunnerState`): what it still holds at exit is released, as atexit would, its process-lifetime
  caches are emptied, and a launcher's worker processes (joblib's) are ended.
"""

import contextlib
import functools
import importlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import sysconfig
import threading
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OURS = tuple(ROOT / name for name in ("runner", "models", "optim", "hydra_plugins", "tests"))
STDLIB = tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")})
PROGRAM = ROOT / "runner" / "__main__.py"  # sys.argv[0] under `python -m runner`: argparse's usage line names it
WARNING_FILTERS = list(warnings.filters)  # the interpreter's, before pytest records warnings per test
SHOW_WARNING = warnings.showwarning, warnings._showwarnmsg_impl  # what prints a warning on stderr


def run_here(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`run *args` in this process, from `cwd` (the repository by default) with `env` added to the
    environment (HYDRA_FULL_ERROR left out unless `env` sets it): its exit code, stdout and stderr,
    as subprocess.run(..., capture_output=True, text=True) gives them."""
    from runner.cli import app

    return as_a_program(app.main, [str(PROGRAM), *args], cwd, env)


def python_here(code: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c code *args` in this process, as `run_here` runs `run`: for a test's script that
    drives Hydra or ablate's main() its own way."""

    def main() -> None:
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102  the test's own script

    return as_a_program(main, ["-c", *args], cwd, env)


def as_a_program(main, argv: list[str], cwd: Path | None, env: dict | None) -> subprocess.CompletedProcess:
    """`main()` with `argv` as sys.argv, as the program of a fresh process: its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        fresh_process(cwd or ROOT, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        fresh_console(),
    ):
        sys.argv = list(argv)
        try:
            main()
        except SystemExit as e:
            code = exit_code(e.code)
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001  as the interpreter ends a program that raised
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def exit_code(code) -> int:
    """The status sys.exit(code) gives a process (a message is printed and exits 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def fresh_process(cwd: Path, env: dict | None):
    """The process as a fresh `run` finds it for the block, and as it was after it."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    hidden = hide_user_modules()
    before = set(sys.modules)
    loggers = LoggingState()
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals() if signal.getsignal(s) is not None}
    excepthooks = sys.excepthook, threading.excepthook
    generators = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    runner_state = RunnerState()
    try:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.update(env or {})
        os.chdir(cwd)
        importlib.invalidate_caches()  # the user's files, written just now, are found
        runner_state.start()
        with warnings.catch_warnings():
            warnings.filters[:] = WARNING_FILTERS
            warnings.showwarning, warnings._showwarnmsg_impl = SHOW_WARNING
            warnings._filters_mutated()
            yield
    finally:
        runner_state.end()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        for name in set(sys.modules) - before:
            if is_users(sys.modules[name]):
                del sys.modules[name]
        sys.modules.update(hidden)
        loggers.restore()
        for s, handler in handlers.items():
            if signal.getsignal(s) is not handler:
                signal.signal(s, handler)
        sys.excepthook, threading.excepthook = excepthooks
        torch.random.set_rng_state(generators[0])
        random.setstate(generators[1])
        np.random.set_state(generators[2])
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def is_users(module) -> bool:
    """A module of a user's folder (a test's tmp folder, examples/): not ablate's, the tests' or a library's."""
    file = getattr(module, "__file__", None)
    return bool(file) and is_users_file(file)


@functools.cache
def is_users_file(file: str) -> bool:
    path = Path(file).resolve()
    installed = any(part in ("site-packages", "dist-packages") for part in path.parts)
    return not installed and not any(path.is_relative_to(folder) for folder in (*OURS, *STDLIB))


def hide_user_modules() -> dict:
    """Takes the users' modules a test imported out of sys.modules (a fresh process has none); they
    are put back afterwards."""
    return {name: sys.modules.pop(name) for name, module in list(sys.modules.items()) if is_users(module)}


class LoggingState:
    """Every logger's level, handlers, propagation and disabled flag; `restore` puts them back and
    closes the handlers a run added (Hydra's run.log among them)."""

    def __init__(self) -> None:
        self.loggers = {None: self.state(logging.getLogger())}
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                self.loggers[name] = self.state(logger)
        self.kept = {h for _, handlers, _, _ in self.loggers.values() for h in handlers}

    @staticmethod
    def state(logger: logging.Logger) -> tuple:
        return logger.level, list(logger.handlers), logger.propagate, logger.disabled

    def restore(self) -> None:
        everyone = [logging.getLogger()] + [
            logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
        ]
        for logger in everyone:
            for handler in logger.handlers:
                if handler not in self.kept:
                    handler.close()
            name = None if logger is logging.getLogger() else logger.name
            if name in self.loggers:
                logger.level, handlers, logger.propagate, logger.disabled = self.loggers[name]
                logger.handlers[:] = handlers
            else:  # a logger that the run created
                logger.handlers.clear()
                logger.setLevel(logging.NOTSET)
        logging.Logger.manager._clear_cache()


@contextlib.contextmanager
def fresh_console():
    """runner.cli.console's rich Console made anew for the run, as at a fresh import: it sees this
    stdout (captured, not a terminal) when it decides on colours and width."""
    from rich.console import Console

    from runner.cli import console

    saved = console.console
    console.console = Console()
    try:
        yield
    finally:
        console.console = saved


class RunnerState:
    """The state ablate and Hydra keep per process. `start`: as a fresh process has it; `end`: what
    the process's exit would do (held run directories released), and nothing left for the next run."""

    def __init__(self) -> None:
        self.classes: dict[type, dict] = {}
        self.held: set = set()

    def start(self) -> None:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.hydra import Hydra

        from runner.engine import lock

        self.held = set(lock._held)  # what the test process held before (a test's own lock.acquire)
        # runner.cli.hydra_shortcuts replaces methods of these for its process (a test's script may too)
        self.classes = {cls: dict(vars(cls)) for cls in (Hydra, ConfigLoaderImpl)}
        self.reset()

    def end(self) -> None:
        from runner.engine import lock

        for run_dir in set(lock._held) - self.held:  # what the run still holds: atexit's release_all
            lock._held[run_dir].count = 1
            lock.release(run_dir)
        for cls, attributes in self.classes.items():
            for name in set(vars(cls)) - set(attributes):
                delattr(cls, name)
            for name, value in attributes.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()  # a compiled run's caches (and its recompilation limit)
        loky = sys.modules.get("joblib.externals.loky.reusable_executor")
        if loky is not None and loky._executor is not None:
            loky._executor.shutdown(wait=True)  # hydra/launcher=joblib's workers: they end with their process
        self.reset()

    @staticmethod
    def reset() -> None:
        from hydra.core.global_hydra import GlobalHydra

        from runner.analysis import hparams, runs
        from runner.cli import app
        from runner.data import facts, image_folder, splits
        from runner.engine import failures, preflight, startup

        GlobalHydra.instance().clear()
        failures.exit_code = 0  # set by a sweep with failed jobs, read at the end of main()
        startup._record.clear()  # the process's start-up, then the time between its jobs
        startup._kind[0] = "startup"
        startup._last.clear()
        startup._taken.clear()
        startup._ordinary.clear()
        app._user_full_error.clear()
        facts._known.clear()  # the data's facts and arrays, kept for the process's lifetime
        facts._loaded.clear()
        preflight._passed.clear()  # the first steps that passed, for a sweep's later jobs
        splits._kept.clear()  # the last data loaded, for a sweep's later jobs
        facts._resolving.clear()
        image_folder._probed.clear()
        runs._read.clear()  # the run directories read back, kept for the process's lifetime
        hparams._made.clear()  # what each HPARAMS record was made of
