"""Hydra's sweeper plugin `hydra/sweeper=ablation` (configs/hydra/sweeper/ablation.yaml): the class
Hydra instantiates must live in the hydra_plugins package; the study itself is runner.ablation."""

import logging
import statistics
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from runner import ablation
from runner.analysis.ablation import accuracies
from runner.cli.launch import numbered

log = logging.getLogger("ablate")


class AblationSweeper(Sweeper):
    def __init__(
        self, design: str = "leave_one_out", seeds: int = 3, margin: float = 0.005, params: dict | None = None
    ):
        super().__init__()
        self.design, self.seeds, self.margin = design, seeds, margin  # read again with the config: study_of

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def launch(self, study: ablation.Study, fixed: list[str], states: list[frozenset[str]]) -> list:
        """Every seed of each of `states`, as jobs numbered by variant and seed (runner.ablation.job_number)."""
        jobs = [(on, seed) for on in states for seed in study.seeds]
        numbers = [ablation.job_number(study, on, seed) for on, seed in jobs]
        overrides = [ablation.job(study, fixed, on, seed) for on, seed in jobs]
        return numbered(self.launcher, overrides, numbers)

    def sweep(self, arguments: list[str]) -> Any:
        study = ablation.study_of(self.config)
        fixed = ablation.fixed_overrides(arguments, study)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if study.design != "path":
            states = ablation.planned(study.design, study.names)
            for on in states:
                study.add(on)
            study.save(sweep_dir)
            return self.launch(study, fixed, states)
        return self.walk_path(study, fixed, sweep_dir)

    def walk_path(self, study: ablation.Study, fixed: list[str], sweep_dir: Path) -> list:
        """From the baseline, each step the component whose turning on gives the best mean validation
        accuracy over the seeds (the first of equals in the components' order), to the full recipe."""
        state: frozenset[str] = frozenset()
        study.add(state)
        study.save(sweep_dir)
        returns = self.launch(study, fixed, [state])
        while len(state) < len(study.names):
            candidates = {n: state | {n} for n in study.names if n not in state}
            for on in candidates.values():
                study.add(on)
            study.save(sweep_dir)
            returns += self.launch(study, fixed, list(candidates.values()))
            scored = {n: v for n, on in candidates.items() if (v := mean_val_acc(study, sweep_dir, on)) is not None}
            if not scored:
                log.error(f"ablation path: no run of {', '.join(candidates)} completed; the path stops here")
                break
            chosen = max(scored, key=lambda n: (scored[n], -study.names.index(n)))
            state = candidates[chosen]
            study.path.append({"on": chosen, "val_acc": scored})
            study.save(sweep_dir)
            log.info(f"ablation path, step {len(study.path)}: +{chosen} (mean val acc {scored[chosen]:.4f})")
        return returns


def mean_val_acc(study: ablation.Study, sweep_dir: Path, on: frozenset[str]) -> float | None:
    """The mean best validation accuracy of a variant's completed runs."""
    values = accuracies(sweep_dir, ablation.variant_name(on, study.names), study.seeds, "best_val_acc")
    return statistics.fmean(values.values()) if values else None
