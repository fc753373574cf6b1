"""Hydra's job: one run of `run`, or one job of a sweep, handed to the training engine.

Here, and only here, a job reads Hydra's config (its run directory, mode, job number, choices and
overrides) and speaks to the terminal. It checks a value a sweeper chose as it went, holds the run
directory (runner.engine.lock: one writer per directory), builds the RunContext, lets the engine
train (runner.engine.run.train), shows the run in TensorBoard's HPARAMS table, prints the summary,
and turns the outcome into the objective for sweepers or an exit code:

- a sweep's job that raises is one error line, kept in <sweep dir>/failed/ for the sweep's end,
  and the sweep goes on (under hydra/launcher=slurm the launcher records it);
- a file that cannot be written (a full disk) stops the run, or the sweep, with WRITE_EXIT;
- a run stopped by a signal exits with 128 + the signal, saying how to resume; a diverged single
  run exits with DIVERGED_EXIT.
"""

import functools
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import GROUPS, ablation, disk, provenance, run_name, tune
from runner.analysis import hparams
from runner.cli import console
from runner.cli.app import BASIC_SWEEPER
from runner.config import schema
from runner.engine import distributed, failures, lock, startup
from runner.engine import records as run_records
from runner.engine.context import RunContext
from runner.engine.interrupt import pass_on
from runner.engine.run import Outcome, SetupError, objective, train

DIVERGED_EXIT = 3  # a single run whose loss became NaN or infinite; a sweep goes on and exits 0


def run_job(cfg: DictConfig) -> float | None:
    """One run, from its config to its run directory, which it holds meanwhile; the objective for
    sweepers. A job of a sweep whose run directory another process holds is left alone, and one that
    raises is recorded as failed (`job_failed`): None, and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    ctx = context(cfg, hydra_cfg)
    if not hold_job_dir(ctx):
        return None
    try:
        return train_job(cfg, ctx)
    except disk.WriteError as e:
        cannot_write(e, ctx)
    except Exception as e:
        if not records_failures(ctx, hydra_cfg):
            raise  # a single run: SetupError is one line and exit 2 (runner.cli.app), the rest Hydra's traceback
        return job_failed(e, cfg, ctx, job_label(hydra_cfg))
    finally:
        if distributed.world().main:
            lock.release(ctx.run_dir)
        startup.mark("records")


def job_label(hydra_cfg) -> str:
    """How an error line names a sweep's job: by what it overrides (model=bn,seed=1), or in an
    ablation study by its variant and seed (full-bn/seed=1, its folder)."""
    if hydra_cfg.sweeper.get("_target_") == ablation.SWEEPER:
        return str(hydra_cfg.sweep.subdir)
    return hydra_cfg.job.override_dirname


def context(cfg: DictConfig, hydra_cfg) -> RunContext:
    """What the engine is told of this job, from Hydra's config."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    choices = {group: hydra_cfg.runtime.choices.get(group) for group in GROUPS}
    phase = os.environ.get(tune.PHASE_ENV, "")
    return RunContext(
        run_dir=Path(hydra_cfg.runtime.output_dir),
        name=run_name(hydra_cfg.runtime.choices),
        choices=choices,
        command=list(hydra_cfg.overrides.task),
        sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None,
        job=hydra_cfg.job.get("num", 0) if multirun else 0,
        parallel_jobs=parallel_jobs(hydra_cfg) if multirun else 1,
        tuning=tune.job_tuning(cfg, choices),
        prune=tune.trial_pruner(),
        meet_test=not phase.startswith("tune/"),  # a tuned sweep's trial: validation only
    )


def parallel_jobs(hydra_cfg) -> int:
    """How many jobs the launcher runs at once: its n_jobs (joblib's -1 is every core), else 1."""
    n = hydra_cfg.launcher.get("n_jobs")
    if not isinstance(n, int) or n == 0:
        return 1
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)


def train_job(cfg: DictConfig, ctx: RunContext) -> float | None:
    """The job in its run directory, which this process holds: the engine trains, the terminal and
    TensorBoard's HPARAMS table show it."""
    if sweeper_chose_values():
        schema.validate(cfg)  # every other job's config was checked before Hydra wrote anything (runner.cli.app)
    console.use_rich_logging()
    quiet_run_log()
    world = distributed.world()
    if not world.main:
        quiet()
    config = OmegaConf.to_container(cfg, resolve=True)
    first = provenance.read(ctx.run_dir) if world.main else None
    if world.main and first is None:  # before it trains: a run that fails or is stopped has it too
        provenance.write(ctx.run_dir, config, user_config_dir())
    root, built = hparams_root(ctx), []

    def as_running(resuming: bool) -> None:
        """A run that ended before is skipped and its record left as it was; one that resumes from
        its checkpoint adds this start to its record; one that starts over gets a new record."""
        built.append(True)
        if first is not None:
            if resuming:
                provenance.add_resumption(ctx.run_dir, first, config, user_config_dir())
            else:
                provenance.write(ctx.run_dir, config, user_config_dir())
        show_in_hparams(root)

    startup.mark("provenance")
    try:
        outcome = train(cfg, ctx, console.TrainingProgress(enabled=world.main), as_running if world.main else None)
    finally:
        if built:  # a run refused while it was built leaves no record (a sweep's job: job_failed writes it)
            show_in_hparams(root)
    if outcome.stop_signal is not None:
        stop(outcome, ctx)
    if world.main:
        console.print_summary(outcome.metrics, str(ctx.run_dir), tensorboard_logdir(ctx.run_dir))
    return finish(outcome.metrics, ctx)


def user_config_dir() -> Path | None:
    """The folder `--config-dir` added to the config search path, if any."""
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            return Path(source.path)
    return None


def sweeper_chose_values() -> bool:
    """Whether this job's values were chosen by a sweeper as it went (a tuned sweep's trial), after
    the check that every job's config passed before the sweep started."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER


def records_failures(ctx: RunContext, hydra_cfg) -> bool:
    """Whether a job that raises is recorded here and the sweep goes on: in a sweep, except under
    hydra/launcher=slurm, whose launcher records it, naming the SLURM job and its log."""
    return ctx.in_sweep and hydra_cfg.launcher.get("_target_") != failures.SLURM_LAUNCHER


def job_failed(error: Exception, cfg: DictConfig, ctx: RunContext, label: str) -> None:
    """A job of a sweep that raised, while it was built or as it trained: one error line naming the
    job (`label`: its overrides), the error and the line of the user's code that raised it
    (runner.engine.failures.describe), kept in <sweep dir>/failed/ for the sweep's end; the traceback
    in the job's run.log; metrics.json says failed and why. None: the sweep goes on, and a tuned
    sweep tells the trial's study it failed."""
    if not distributed.world().main:
        return
    said = failures.describe(error, one_line=isinstance(error, SetupError))
    line = f"job #{ctx.job} ({label}): {said}"
    console.log.error(line)
    log_traceback(error)
    try:
        run_records.mark_failed(line, cfg, ctx)
        failures.record(ctx.sweep_dir, ctx.job, line)
    except disk.WriteError as e:
        cannot_write(e, ctx)
    show_in_hparams(hparams_root(ctx))
    return


def log_traceback(error: BaseException) -> None:
    """The error's traceback, in the job's log file (run.log) only: the terminal has its one line."""
    record = console.log.makeRecord(
        console.log.name,
        logging.ERROR,
        __file__,
        0,
        "the traceback of the error above:",
        None,
        (type(error), error, error.__traceback__),
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def resume_with(ctx: RunContext) -> str:
    """The override that resumes this run, or its sweep, with the same command."""
    return f"hydra.sweep.dir={ctx.sweep_dir}" if ctx.in_sweep else f"hydra.run.dir={ctx.run_dir}"


def cannot_write(error: disk.WriteError, ctx: RunContext) -> NoReturn:
    """A file of the run that cannot be written (a full disk) ends the run, and a sweep (its next jobs
    would fail alike), with WRITE_EXIT: one line naming the file, the free space, what is kept and how
    to go on. What was written before is whole (runner.disk), so the same command resumes."""
    last = ctx.checkpoint
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
    mend = "free space" if error.errno in disk.NO_SPACE else "make it writable"
    if distributed.world().main:
        print(
            f"error: {error}; {kept}: {mend} and run the same command with {resume_with(ctx)} to resume",
            file=sys.stderr,
        )
    raise SystemExit(disk.WRITE_EXIT)


def hold_job_dir(ctx: RunContext) -> bool:
    """Rank 0 holds the run directory before ablate writes into it (a single run holds it already,
    since CheckFirst: runner.cli.app.hold_single_run_dir); every rank learns rank 0's answer. Whether
    the job runs: a sweep's job whose directory another process holds is one error line, recorded
    for the sweep's end (runner.engine.failures), and the sweep goes on; a single run's is refused
    (SetupError)."""
    world = distributed.world()
    busy = distributed.shared("holder", lambda: lock.try_acquire(ctx.run_dir))
    if not busy:
        if ctx.in_sweep and world.main:
            failures.clear(ctx.sweep_dir, ctx.job)  # a resumed sweep forgets an old refusal
        return True
    if not ctx.in_sweep:
        raise SetupError(f"hydra.run.dir={busy}")
    if world.main:
        line = f"job #{ctx.job} ({job_label(HydraConfig.get())}): {busy}"
        leave_run_log()
        console.log.error(line)
        failures.record(ctx.sweep_dir, ctx.job, line)
    return False


def quiet_run_log() -> None:
    """A line that cannot be written to run.log (a full disk) is dropped without logging's traceback on
    the terminal: the next write of the run's own files says what failed, in one line (`cannot_write`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "drops_os_errors", False):
            handler.handleError = functools.partial(drop_os_error, handler.handleError)
            handler.drops_os_errors = True


def drop_os_error(report, record: logging.LogRecord) -> None:
    """logging's handleError, called while the handler's error is handled: an OSError is dropped."""
    if not isinstance(sys.exc_info()[1], OSError):
        report(record)


def leave_run_log() -> None:
    """Hydra's log file of this job (run.log in the run directory) is closed; the log goes to the terminal only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def quiet() -> None:
    """A rank other than 0 prints warnings only and writes no log file: rank 0 speaks for the run."""
    leave_run_log()
    console.log.setLevel(logging.WARNING)


def show_in_hparams(root: Path) -> None:
    """TensorBoard's HPARAMS records of the runs under `root`, this one's included; a failure to write
    them is a warning, never the run's failure."""
    try:
        hparams.refresh(root)
    except OSError as e:
        console.log.warning(f"TensorBoard's HPARAMS records under {root} were not updated: {e}")


def hparams_root(ctx: RunContext) -> Path:
    return hparams.root_of(ctx.run_dir, Path(HydraConfig.get().runtime.cwd), ctx.sweep_dir)


def tensorboard_logdir(run_dir: Path) -> str:
    """What to pass to `tensorboard --logdir`: outputs for a run under it, else the run directory."""
    outputs = Path(HydraConfig.get().runtime.cwd, "outputs").resolve()
    return "outputs" if run_dir.resolve().is_relative_to(outputs) else str(run_dir)


def stop(outcome: Outcome, ctx: RunContext) -> NoReturn:
    """An interrupted run exits with 128 + the signal, saying how to resume; a sweep stops here too
    (its later jobs have not started), and a launcher's own handler gets the signal (submitit requeues)."""
    again = "to resume the sweep, run the same command with" if ctx.in_sweep else "to resume, run it again with"
    pass_on(outcome.stop_signal)
    if distributed.world().main:
        steps = outcome.metrics["steps"]
        console.log.warning(
            f"{ctx.name}: stopped by signal {outcome.stop_signal} at step {steps}; {again} {resume_with(ctx)}"
        )
    raise SystemExit(128 + outcome.stop_signal)


def finish(metrics: dict, ctx: RunContext) -> float | None:
    """The objective for sweepers; a diverged single run exits with DIVERGED_EXIT (a sweep goes on)."""
    if metrics["status"] == "diverged":
        console.log.error(
            f"{ctx.name}: the training loss became NaN or infinite by step {metrics['steps']} ({ctx.run_dir}); "
            "status: diverged. Try a lower optimizer.lr or set trainer.grad_clip"
        )
        if not ctx.in_sweep:
            raise SystemExit(DIVERGED_EXIT)
    return objective(metrics)
