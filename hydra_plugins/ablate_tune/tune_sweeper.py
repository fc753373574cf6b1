"""Hydra's sweeper plugin `hydra/sweeper=tune` (configs/hydra/sweeper/tune.yaml): the class Hydra
instantiates must live in the hydra_plugins package; what it does is in runner.tune."""

import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from runner.cli.launch import numbered
from runner.tune import (
    DIVERGED_SCORE,
    PHASE_ENV,
    PRUNERS,
    STUDY_FILE,
    TRIAL_ENV,
    label,
    log,
    make_pruner,
    objective,
    phase,
    quoted,
    sampler,
    split,
    sweep_overrides,
    trial_status,
)  # fmt: skip


class TuneSweeper(Sweeper):
    def __init__(
        self, trials: int = 8, seeds: int = 3, sampler_seed: int = 0, pruner: str = "median", params: dict | None = None
    ):
        super().__init__()
        if pruner not in PRUNERS:
            raise HydraException(f"hydra.sweeper.pruner={pruner!r} is not known; allowed: {', '.join(PRUNERS)}")
        self.trials, self.seeds, self.sampler_seed = trials, seeds, sampler_seed  # params: read with the config
        self.pruner = pruner

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def launch(self, jobs: list[list[str]], numbers: list[int]) -> list:
        """Launches `jobs` as job numbers `numbers` (hydra.job.num)."""
        return numbered(self.launcher, jobs, numbers)

    def numbers(self, variant: int) -> tuple[int, int]:
        """The job numbers of a variant's trial 0 and final run 0: the same whenever the sweep runs
        again in its directory, so that a job that runs again is the job that failed there (its record
        in failed/ is cleared, runner.engine.failures)."""
        first = variant * (self.trials + self.seeds)
        return first, first + self.trials

    def trial_job(self, space, variant: list[str], name: str, storage: str, trial) -> list[str]:
        """A trial's overrides: the variant, the trial's values, its directory, its phase and, with a
        pruner, where the run reports each epoch (Optuna keeps the trial's id private: no public getter)."""
        job = [*space.fixed, *variant, *(f"{k}={v}" for k, v in trial.params.items()),
               quoted("hydra.sweep.subdir", f"tune/{name}/trial-{trial.number}"),
               quoted(f"++hydra.job.env_set.{PHASE_ENV}", phase("tune", trial.number, space.params))]  # fmt: skip
        if self.pruner != "none":
            job.append(quoted(f"++hydra.job.env_set.{TRIAL_ENV}", f"{self.pruner}|{storage}|{name}|{trial._trial_id}"))
        return job

    def batch_size(self) -> int:
        """Trials asked for and launched at once: joblib's `n_jobs` (-1: every core, as joblib counts),
        a submitit launcher's `array_parallelism`, else 1 (each trial learns from all before it)."""
        launcher = self.config.hydra.launcher
        n = launcher.get("n_jobs", launcher.get("array_parallelism"))
        if isinstance(n, int) and n < 0:
            n = max(1, (os.cpu_count() or 1) + 1 + n)
        return n if isinstance(n, int) and n > 0 else 1

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = split(parser.parse_overrides(sweep_overrides(self.config, arguments)))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        tuning_seed = int(self.config.seed)
        returns = []
        for index, variant in enumerate(space.variants):
            name = label(variant)
            first_trial, first_final = self.numbers(index)
            study = optuna.create_study(
                study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                pruner=make_pruner(self.pruner),
            )  # fmt: skip
            # trials a stopped sweep left running: their runs resume from their checkpoints
            left = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
            while left or len(study.trials) < self.trials:
                batch = left[: self.batch_size()]
                left = left[len(batch) :]
                while len(batch) < self.batch_size() and len(study.trials) < self.trials:
                    study.sampler = sampler(self.sampler_seed, len(study.trials), self.trials, space.params)
                    batch.append(study.ask(space.params))
                jobs = [self.trial_job(space, variant, name, storage, t) for t in batch]
                results = self.launch(jobs, [first_trial + t.number for t in batch])
                for trial, result in zip(batch, results, strict=True):
                    returns.append(result)
                    status = trial_status(sweep_dir / "tune" / name / f"trial-{trial.number}")
                    if status == "pruned":
                        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
                        continue
                    value = DIVERGED_SCORE if status == "diverged" else objective(result)
                    study.tell(trial.number, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
            if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                log.error(f"{name}: no trial completed (see tune/{name}/); no final runs for this variant")
                continue
            best = study.best_trial
            log.info(f"{name}: best of {len(study.trials)} trials: {best.params} (val acc {best.value:.4f})")
            fixed = [o for o in space.fixed if not o.startswith("seed=")]  # the finals take fresh seeds
            finals = [
                [*fixed, *variant, *(f"{k}={v}" for k, v in best.params.items()), f"seed={s}",
                 quoted("hydra.sweep.subdir", f"final/{name}/seed={s}"), quoted(f"++hydra.job.env_set.{PHASE_ENV}", phase("final", best.number, space.params))]
                for s in range(tuning_seed + 1, tuning_seed + 1 + self.seeds)
            ]  # fmt: skip
            returns += self.launch(finals, list(range(first_final, first_final + len(finals))))
        return returns
