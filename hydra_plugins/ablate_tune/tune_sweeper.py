"""Hydra's sweeper plugin `hydra/sweeper=tune` (configs/hydra/sweeper/tune.yaml): the class Hydra
instantiates must live in the hydra_plugins package; what it does is in runner.tune."""

from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from runner.tune import PHASE_ENV, STUDY_FILE, label, log, objective, quoted, split


class TuneSweeper(Sweeper):
    def __init__(self, trials: int = 8, seeds: int = 3, sampler_seed: int = 0, params: dict | None = None):
        super().__init__()
        self.trials, self.seeds, self.sampler_seed, self.params = trials, seeds, sampler_seed, params or {}
        self.job_index = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def launch(self, jobs: list[list[str]]) -> list:
        results = self.launcher.launch(jobs, initial_job_idx=self.job_index)
        self.job_index += len(jobs)
        return list(results)

    def batch_size(self) -> int:
        n = self.config.hydra.launcher.get("n_jobs")
        return n if isinstance(n, int) and n > 0 else 1

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = split(parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments]))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        tuning_seed = int(self.config.seed)
        returns = []
        for variant in space.variants:
            name = label(variant)
            study = optuna.create_study(
                study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=self.sampler_seed),
            )  # fmt: skip
            while len(study.trials) < self.trials:
                asked = [study.ask(space.params) for _ in range(min(self.batch_size(), self.trials - len(study.trials)))]
                jobs = [
                    [*space.fixed, *variant, *(f"{k}={v}" for k, v in t.params.items()),
                     quoted("hydra.sweep.subdir", f"tune/{name}/trial-{t.number}"),
                     f"++hydra.job.env_set.{PHASE_ENV}=tune/{t.number}"]
                    for t in asked
                ]  # fmt: skip
                for trial, result in zip(asked, self.launch(jobs), strict=True):
                    value = objective(result)
                    study.tell(trial, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
                    returns.append(result)
            best = study.best_trial
            log.info(f"{name}: best of {len(study.trials)} trials: {best.params} (val acc {best.value:.4f})")
            fixed = [o for o in space.fixed if not o.startswith("seed=")]  # the finals take fresh seeds
            finals = [
                [*fixed, *variant, *(f"{k}={v}" for k, v in best.params.items()), f"seed={s}",
                 quoted("hydra.sweep.subdir", f"final/{name}/seed={s}"), f"++hydra.job.env_set.{PHASE_ENV}=final/{best.number}"]
                for s in range(tuning_seed + 1, tuning_seed + 1 + self.seeds)
            ]  # fmt: skip
            returns += self.launch(finals)
        return returns
