"""hydra/launcher=slurm: Hydra's submitit_slurm launcher, with a sweep that ends whatever its jobs do.

The plugin's launcher waits on each job's result file and asks `sacct` when a job ended; where the
cluster keeps no accounting, sacct fails at every poll ("status may be inaccurate"), and a job that
ended without a result file (killed by SLURM, out of memory, its node lost) keeps the sweep waiting
forever; a job that failed, or ran out of requeues after its time limit, ends the sweep with a raw
traceback and no summary. Here:

- the sweep asks `squeue` (which needs no accounting) for its jobs' states. A job that SLURM ended
  (or no longer knows) without a result file, still so at the next poll, is lost: it fails;
- a failed job (it raised, it was refused, it ran out of requeues, it was lost) is one error line
  naming the job and its SLURM log, kept in `<sweep dir>/failed/` (runner.engine.failures), and the
  status `failed` in its metrics.json; the other jobs go on, the summary is written, and the sweep
  exits with runner.engine.failures.FAILED_EXIT;
- on the node, the job holds its run directory before Hydra writes into it (runner.engine.lock):
  a sweep submitted again while the first still runs reports the busy job and leaves it alone.
"""

import json
import logging
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the result files are looked for
ASK_SLURM_S = 10.0  # how often squeue is asked for the jobs' states
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
UNKNOWN = "no longer known to SLURM"


class SlurmLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: dict
    ) -> JobReturn:
        """One job, on its node: the plugin's, with the run directory held first (rank 0)."""
        import submitit

        from runner.engine import failures, lock

        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = job_num
        run_dir = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        main = submitit.JobEnvironment().global_rank == 0
        if main:
            try:
                lock.acquire(run_dir)
            except lock.Busy as e:
                line = f"job #{job_num} ({config.hydra.sweep.subdir}): {e}"
                print(f"error: {line}", flush=True)
                failures.record(Path(str(config.hydra.sweep.dir)), job_num, line)
                return JobReturn(overrides=sweep_overrides, status=JobStatus.COMPLETED, _return_value=None)
        try:
            return run_job(
                hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir",
            )  # fmt: skip
        finally:
            if main:
                lock.release(run_dir)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        """Submits the jobs as one array and waits until each has a result or has ended without one."""
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        arguments = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            arguments.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*arguments))
        nums = range(initial_job_idx, initial_job_idx + len(jobs))
        return [
            self.outcome(sweep_dir, n, list(o), job, lost)
            for n, o, job, lost in zip(nums, job_overrides, jobs, wait(jobs))
        ]

    def why(self, said: str) -> str:
        """A job's error in one line; running out of requeues names the key that allows more."""
        if "timed-out too many times" in said:  # submitit's words
            limit = self.params["max_num_timeout"]
            return (
                f"reached its time limit with no requeue left (hydra.launcher.max_num_timeout={limit}); "
                "its checkpoint is kept: the same command resumes it"
            )
        return said

    def executor(self):
        """submitit's executor with the launcher's parameters, as the plugin's launcher builds it."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=self.params["submitit_folder"], slurm_max_num_timeout=self.params["max_num_timeout"]
        )
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in queue_keys else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        return executor

    def outcome(self, sweep_dir: Path, num: int, overrides: list[str], job, lost: str | None) -> JobReturn:
        """The job's JobReturn; a failed job's is a completed one without a value (the sweep goes on),
        with its error line recorded and its metrics.json marked failed."""
        from runner.engine import failures

        first = job.task(0)
        reason = lost
        returned = None
        if reason is None:
            state, value = first._get_outcome_and_result()  # submitit's result file, read without waiting on sacct
            if state == "error":  # raised outside Hydra's run_job: a traceback
                reason = self.why(last_line(value))
            elif value.status == JobStatus.FAILED:  # raised in the job; return_value would raise it here
                error = value._return_value
                reason = self.why(f"{type(error).__name__}: {first_line(str(error))}")
            else:
                returned = value
        if returned is not None:
            return returned
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        logs = first.paths.stderr if first.paths.stderr.exists() else first.paths.folder
        said = error_in(first.paths.stderr)
        line = f"job #{num} ({config.hydra.sweep.subdir}), SLURM job {job.job_id}: {reason}{f'; {said}' if said else ''}; log: {logs}"
        failures.record(sweep_dir, num, line)
        mark_failed(config, line)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)


def mark_failed(config, line: str) -> None:
    """metrics.json of a failed job says `failed` and why; a job lost before it wrote one gets one
    (and the config it was to run, in .hydra/config.yaml), so that the summary lists it as failed."""
    from runner import GROUPS
    from runner.engine.log import write_json

    run_dir = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        metrics = None
    if metrics is not None and metrics.get("status") in ("completed", "diverged", "pruned"):
        return
    if metrics is None:
        choices = config.hydra.runtime.choices
        metrics = {"seed": config.seed, "choices": {g: choices.get(g) for g in GROUPS}}
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.exists():
            saved.parent.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), saved)
    metrics.update(status="failed", error=line)
    write_json(path, metrics)


def wait(jobs: list) -> list[str | None]:
    """Waits until every job has a result file or ended without one; for each, None or why it is lost."""
    lost: dict[int, str] = {}
    suspects: dict[int, str] = {}  # ended without a result at the last look; lost if still so at the next
    asked = float("-inf")
    while True:
        pending = [i for i, job in enumerate(jobs) if i not in lost and not job.task(0).paths.result_pickle.exists()]
        if not pending:
            return [lost.get(i) for i in range(len(jobs))]
        if time.monotonic() - asked >= ASK_SLURM_S:
            asked = time.monotonic()
            states = slurm_states({jobs[i].job_id.split("_")[0] for i in pending})
            if states is not None:
                for i in pending:
                    state = states.get(jobs[i].job_id, UNKNOWN)
                    if state in ENDED or state == UNKNOWN:
                        if i in suspects:
                            lost[i] = (
                                f"ended in SLURM as {state} without a result"
                                if state != UNKNOWN
                                else f"{UNKNOWN}, no result"
                            )
                        suspects[i] = state
                    else:
                        suspects.pop(i, None)
        time.sleep(POLL_S)


def slurm_states(array_ids: set[str]) -> dict[str, str] | None:
    """`<job id>` (or `<array id>_<task>`) -> SLURM state, from squeue, for the given jobs and arrays;
    jobs SLURM no longer knows are absent; None where squeue could not be asked (then nothing is concluded)."""
    command = [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        f"--jobs={','.join(sorted(array_ids))}",
        "--format=%i|%T",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning(f"squeue could not be asked for the jobs' states ({e}); trying again")
        return None
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}  # every one of them ended long enough ago for SLURM to forget it
        log.warning(f"squeue could not be asked for the jobs' states ({first_line(result.stderr)}); trying again")
        return None
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state.split()[0] if state else UNKNOWN
    return states


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def error_in(log_file: Path) -> str:
    """ablate's own `error: ...` line in a job's log, the last one, if any."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"^error: (.+)$", text, flags=re.MULTILINE)
    return found[-1].strip() if found else ""
