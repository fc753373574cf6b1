"""The `run` command: a Hydra app over configs/. torch is imported inside the task, so
`run --help` and `run --cfg job` stay fast.

Bad input is refused before anything is written: composition checks the keys and types
(runner/config/schema.py), the CheckFirst callback the values of the run or of every job of a sweep, and
either refusal comes out as one line, `error: <key>=<value> is not allowed; allowed: ...`, exit 2
(with HYDRA_FULL_ERROR=1, the traceback instead).

Under torchrun (`torchrun --nproc_per_node=N -m runner ...`) every rank runs this program; the
`started` and `new_dir` resolvers give every rank rank 0's values, so all name one run directory,
and only rank 0 writes Hydra's .hydra/ files (runner.engine.distributed)."""

import atexit
import itertools
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import ablation, provenance, tune
from runner.cli import hydra_shortcuts
from runner.config import builtin, hydra_errors, schema
from runner.data import facts
from runner.engine import collector, distributed, failures, lock, startup

CONFIGS = builtin.configs_dir()  # the checkout's configs/, or a wheel's copy (runner/config/builtin.py)
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
FULL_ERROR = "HYDRA_FULL_ERROR"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # a name to compare, not imported
TUNE_SWEEPER = "hydra_plugins.ablate_tune.tune_sweeper.TuneSweeper"


@hydra.main(config_path=str(CONFIGS), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> float | None:
    startup.mark("launch")  # a later job of this process: Hydra set it up
    startup.mark("checks")  # the process's first: its config checked, Hydra's .hydra/ and log set up
    from runner.cli.job import run_job
    from runner.engine.run import SetupError

    startup.mark("engine")

    importable_cwd()  # again: a launcher may run the job in a process of its own

    try:
        return run_job(cfg)
    except SetupError as e:  # a single run's (a sweep's job records its own and returns: runner.cli.job.job_failed)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def importable_cwd() -> None:
    """The current directory is importable, as for `python -m`, so that a `_target_` can name a
    module of the user's (my_parts.TinyNet). Last on the path: a file of the user's named like one
    of ablate's packages (models.py) cannot hide it."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def new_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first that does not exist yet, created now, so two
    sweeps started in the same second never share a directory. Under torchrun, rank 0's."""
    return distributed.shared("new_dir", lambda: make_new_dir(path))


def make_new_dir(path: str) -> str:
    candidate, n = Path(path), 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            n += 1
            candidate = Path(f"{path}-{n}")


def name_jobs_by_swept_keys(argv: list[str]) -> list[str]:
    """In a sweep, leave the fixed overrides out of the job directory names, so a job of
    `run -m model=plain,bn seed=0,1 trainer.max_epochs=3` is named `model=bn,seed=1` (and a job of
    `run -m experiment=quick`, whose preset sweeps model and seed, `model=bn,seed=1`)."""
    if not {"-m", "--multirun"} & set(argv) or any(a.startswith(EXCLUDE_KEYS) for a in argv):
        return argv
    candidates = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return argv  # Hydra reports the bad override itself
    fixed = [o.key_or_group for o in overrides if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    if not fixed:
        return argv
    at = argv.index(candidates[0])  # next to the other overrides: argparse wants them together
    return [*argv[:at], f"{EXCLUDE_KEYS}=[{','.join(fixed)}]", *argv[at:]]


class CheckFirst(Callback):
    """Hydra callback: the run's config, or every job's config of a sweep, passes schema.validate
    before Hydra writes anything (run directory, sweep directory, multirun.yaml); a single run then
    holds its run directory (runner.engine.lock) until it ends. Hydra turns what a callback raises
    into a warning, so a refusal ends the program here."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None  # the run directory this run holds, from on_run_start to on_run_end

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        startup.mark("composition")
        import torch  # noqa: F401  the check imports it anyway (it finds the models' classes): first, to time it alone

        startup.mark("torch")
        try:
            schema.validate(config)
        except schema.ConfigError as e:
            refuse(e, [])
        self.run_dir = hold_single_run_dir(config)
        errors_as_usual()

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_dir is not None and distributed.world().main:
            lock.release(self.run_dir)
            self.run_dir = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweeper = config.hydra.sweeper.get("_target_")
        tuned = sweeper == TUNE_SWEEPER
        try:
            jobs = sweep_jobs(config)
        except schema.ConfigError as e:
            refuse(e, [])
        for overrides in jobs:
            try:
                job = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
                schema.validate(job)
                if tuned:
                    tune.check_job(job)
                if sweeper == ablation.SWEEPER:
                    ablation.check_job(job, str(config.hydra.sweeper.design))
            except (schema.ConfigError, HydraException, OmegaConfBaseException) as e:
                refuse(e, overrides)
        errors_as_usual()


class SweepSummary(Callback):
    """Hydra callback: the summary of a sweep, in its sweep directory, when the sweep ends; then the
    error line of each job that failed (runner.engine.failures), and the sweep's exit code."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not distributed.world().main:
            return  # under torchrun, rank 0 writes the summary
        from runner.analysis.report import report_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        unwritten = ()
        try:
            report_sweep(sweep_dir, sweep_dir)
        except Exception as e:  # noqa: BLE001  Hydra would make it a warning; the runs are kept, report writes it again
            why = f"{failures.describe(e)}; its runs are kept: report {sweep_dir} writes it again"
            unwritten = (f"the summary of {sweep_dir} was not written: {why}",)
        finally:
            failures.announce(sweep_dir, unwritten)


def hold_single_run_dir(config: DictConfig) -> Path:
    """The run directory (hydra.run.dir resolved, as Hydra will name it), held by rank 0 before
    Hydra writes into it. Under torchrun every rank resolves it here alike (the `started` resolver
    is shared between ranks in call order) and learns rank 0's answer. Held by another live process:
    one line naming the holder and exit 2, with the directory left as it is."""
    HydraConfig.instance().set_config(config)  # hydra.run.dir names ${hydra:runtime.choices...}, as Hydra does
    try:
        run_dir = Path(str(config.hydra.run.dir))
    except (HydraException, OmegaConfBaseException) as e:
        refuse(e, list(config.hydra.overrides.hydra))
    refusal = distributed.shared("holder", lambda: take_run_dir(run_dir))
    if refusal:
        if distributed.world().main:
            print(f"error: {refusal}", file=sys.stderr)
        sys.exit(2)
    return run_dir


def take_run_dir(run_dir: Path) -> str:
    """Holds `run_dir` for this process: "" when it does, else the refusal's line."""
    try:
        busy = lock.try_acquire(run_dir)
    except OSError as e:
        reason = e.strerror or e
        return f"hydra.run.dir={run_dir} cannot be held ({reason}); allowed: a directory this process can write"
    return f"hydra.run.dir={busy}" if busy else ""


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job the sweep will launch: every combination of the swept values, in
    the order of Hydra's basic sweeper; for a tuned sweep, each variant at the ends of its search
    space; for an ablation study, each side of every component (runner.ablation.checked_jobs); under
    another sweeper, only the fixed overrides."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    if config.hydra.sweeper.get("_target_") == TUNE_SWEEPER:
        return tune.checked_jobs(
            parser.parse_overrides(tune.sweep_overrides(config, list(config.hydra.overrides.task)))
        )
    if config.hydra.sweeper.get("_target_") == ablation.SWEEPER:
        return ablation.checked_jobs(config, list(config.hydra.overrides.task))
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return [[o.input_line for o in overrides if not o.is_sweep_override()]]
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in overrides
    ]
    return [list(job) for job in itertools.product(*choices)]


_user_full_error: list[str | None] = []  # HYDRA_FULL_ERROR as the user set it, while main() holds it at 1


def hold_errors() -> None:
    """Until the config is composed and checked, have Hydra raise its errors (HYDRA_FULL_ERROR=1)
    rather than print them over several lines, so that they come out in one."""
    _user_full_error.append(os.environ.get(FULL_ERROR))
    os.environ[FULL_ERROR] = "1"


def errors_as_usual() -> None:
    """HYDRA_FULL_ERROR as the user set it, for the jobs (and the processes a launcher starts)."""
    if _user_full_error:
        value = _user_full_error.pop()
        if value is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = value


def refuse(error: Exception, overrides: list[str]) -> NoReturn:
    """Exit 2 on bad input: one line naming the key, the value and what is allowed, or with
    HYDRA_FULL_ERROR=1 the traceback."""
    user_value = _user_full_error[-1] if _user_full_error else os.environ.get(FULL_ERROR)
    if user_value == "1":
        traceback.print_exception(error)
    else:
        message = hydra_errors.describe(error, overrides, lambda group: chosen_keys(group, overrides))
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def chosen_keys(group: str, argv: list[str]) -> list[str] | None:
    """The keys that `group`'s chosen callable accepts, for the refusal of an unknown key: the
    config composed again (with Hydra's compose API, the user's --config-dir included) without the
    command line's keys of that group; the first value of a swept choice. None if that fails too."""
    from hydra import compose, initialize_config_dir

    try:
        kept = []
        for o in OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")]):
            if o.key_or_group.startswith(("hydra", f"{group}.")):
                continue
            first = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else None
            kept.append(f"{o.get_key_element()}={first}" if first is not None else o.input_line)
        user_dir = config_dir(argv)
        search = [f"hydra.searchpath=[file://{Path(user_dir).resolve()}]"] if user_dir else []
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=[*kept, *search])
        return schema.keys_of(group, cfg[group])
    except Exception:  # noqa: BLE001 the refusal's list of keys is a courtesy: any failure leaves it out
        return None


def config_dir(argv: list[str]) -> str | None:
    """The folder of `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`) on the command line."""
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config-dir="):
            return arg.split("=", 1)[1]
    return None


def rank_argv(argv: list[str]) -> list[str]:
    """Under torchrun, ranks other than 0 leave Hydra's .hydra/ files to rank 0."""
    if distributed.world().main or any(a.startswith("hydra.output_subdir=") for a in argv):
        return argv
    return [*argv, "hydra.output_subdir=null"]


OmegaConf.register_new_resolver("new_dir", new_dir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("started", distributed.started, use_cache=True, replace=True)
facts.register()  # ${data:num_classes} and the data's other facts, in a part's YAML (runner.data.facts)


def command() -> NoReturn:
    """The `run` command (and `python -m runner`): main(), then the process ends as soon as what it
    wrote is flushed, without tearing down its modules one by one (about 0.6 s for torch's on 2
    cores, a twentieth of a short run). Threads are joined and exit handlers run as at a normal exit
    (logging's closes run.log); an exception that escapes main() ends the process the usual way."""
    collector.off_while_starting()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python prints it
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def main() -> None:
    startup.mark("python")
    failures.exit_code = 0  # a sweep's failed jobs are its own: not those of an earlier main() in this process
    if {"--help", "-h", "--hydra-help"} & set(sys.argv[1:]):
        hydra_shortcuts.one_repository_for_help()
    elif not {"-m", "--multirun"} & set(sys.argv[1:]):
        hydra_shortcuts.one_composition_per_run()
    else:
        hydra_shortcuts.one_composition_per_job()
    importable_cwd()
    os.environ[provenance.COMMAND_ENV] = " ".join(["run", *sys.argv[1:]])  # as typed, for every job's provenance
    sys.argv = rank_argv(name_jobs_by_swept_keys(sys.argv))
    hold_errors()
    try:
        task()
    except (HydraException, OmegaConfBaseException) as e:
        if not _user_full_error:
            raise  # after the config was checked: Hydra reported it already, or HYDRA_FULL_ERROR=1 wants it raised
        refuse(e, sys.argv[1:])  # while composing
    except SystemExit as e:
        distributed.leave(e.code)
        raise
    finally:
        errors_as_usual()
    distributed.leave(failures.exit_code)
    if failures.exit_code:
        sys.exit(failures.exit_code)  # a sweep with failed jobs, after its summary
