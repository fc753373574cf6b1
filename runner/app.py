"""The `run` command: a Hydra app over configs/. torch is imported inside the task, so
`run --help` and `run --cfg job` stay fast.

Bad input is refused before anything is written: composition checks the keys and types
(runner/schema.py), the CheckFirst callback the values of the run or of every job of a sweep, and
either refusal comes out as one line, `error: <key>=<value> is not allowed; allowed: ...`, exit 2
(with HYDRA_FULL_ERROR=1, the traceback instead).

Under torchrun (`torchrun --nproc_per_node=N -m runner ...`) every rank runs this program; the
`started` and `new_dir` resolvers give every rank rank 0's values, so all name one run directory,
and only rank 0 writes Hydra's .hydra/ files (runner.distributed)."""

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import distributed, schema

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
FULL_ERROR = "HYDRA_FULL_ERROR"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@hydra.main(config_path=str(CONFIGS), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> float | None:
    from runner.job import SetupError, run_job

    try:
        return run_job(cfg)
    except SetupError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


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
    before Hydra writes anything (run directory, sweep directory, multirun.yaml). Hydra turns what a
    callback raises into a warning, so a refusal ends the program here."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            schema.validate(config)
        except schema.ConfigError as e:
            refuse(e, [])
        errors_as_usual()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        for overrides in sweep_jobs(config):
            try:
                schema.validate(GlobalHydra.instance().config_loader().load_sweep_config(config, overrides))
            except (schema.ConfigError, HydraException, OmegaConfBaseException) as e:
                refuse(e, overrides)
        errors_as_usual()


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job the sweep will launch: every combination of the swept values
    (Hydra's basic sweeper); under another sweeper, only the fixed overrides."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return [[o.input_line for o in overrides if not o.is_sweep_override()]]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return jobs


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
        print(f"error: {schema.describe(error, overrides)}", file=sys.stderr)
    sys.exit(2)


def rank_argv(argv: list[str]) -> list[str]:
    """Under torchrun, ranks other than 0 leave Hydra's .hydra/ files to rank 0."""
    if distributed.world().main or any(a.startswith("hydra.output_subdir=") for a in argv):
        return argv
    return [*argv, "hydra.output_subdir=null"]


OmegaConf.register_new_resolver("new_dir", new_dir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("started", distributed.started, use_cache=True, replace=True)


def main() -> None:
    sys.argv = rank_argv(name_jobs_by_swept_keys(sys.argv))
    hold_errors()
    try:
        task()
    except (HydraException, OmegaConfBaseException) as e:
        if not _user_full_error:
            raise  # after the config was checked: Hydra reported it already, or HYDRA_FULL_ERROR=1 wants it raised
        refuse(e, sys.argv[1:])  # while composing
    finally:
        errors_as_usual()
