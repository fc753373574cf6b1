"""`hydra/sweeper=tune`: tune each variant, then compare the variants over fresh seeds.

    run -m hydra/sweeper=tune optimizer=sgd,adam 'optimizer.lr=tag(log,interval(0.0001,0.5))' \\
        hydra.sweeper.trials=4 hydra.sweeper.seeds=2

Comma lists are the variants (their cartesian product, as a plain sweep runs them); Hydra's sweep
functions are the search space: `interval(a,b)` a float, `tag(log, interval(a,b))` on a log scale,
`range(a,b)` an integer from a to b-1 (as Python's range), `choice(a,b,c)` categorical. Each variant
gets an Optuna study of `trials` trials (the first half spread evenly over the search space, the
rest drawn by TPE, seeded from `sampler_seed`), in `study.db` (SQLite) in the sweep directory: run
again in the same sweep directory, it continues. A preset declares its search space in
`search_space`. Each trial is an ordinary run under `tune/<variant>/trial-<n>/`, scored by its best
validation accuracy; it does not meet the test set. The best trial's values are then run with
`seeds` fresh seeds (the seeds after the config's `seed`, which the trials use) under
`final/<variant>/seed=<s>/`, and the summary compares those final runs (runner.analysis.report).
Jobs go through the chosen launcher (`hydra/launcher=joblib` runs a batch of trials at once).
The sweeper class itself lives in hydra_plugins/ablate_tune/ (Hydra finds sweepers there only).
"""

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from runner import flatten

log = logging.getLogger(__name__)
PHASE_ENV = "ABLATE_TUNE"  # a job's phase, trial and tuned keys ("tune/3/optimizer.lr"), for its metrics.json
TRIAL_ENV = "ABLATE_TRIAL"  # a trial's pruner, storage, study and trial id ("median|sqlite:///...|name|12")
PRUNERS = ("median", "none")
STUDY_FILE = "study.db"
DIVERGED_SCORE = 0.0  # a trial whose loss became NaN: told as scored 0, so that TPE learns to avoid its values


@dataclass
class Space:
    """The overrides of a tuned sweep, sorted: variants, search space, the rest."""

    variants: list[list[str]]  # each variant's overrides
    params: dict[str, Any]  # key -> optuna distribution
    fixed: list[str]


def distribution(override: Override):
    """The Optuna distribution of a search-space override (interval, range, choice)."""
    import optuna.distributions as d

    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        return d.IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step))
    return d.CategoricalDistribution(list(sweep.list))


def sweep_overrides(config, arguments: list[str]) -> list[str]:
    """A tuned sweep's overrides: the preset's `search_space`, then `hydra.sweeper.params` (less a
    preset's seed list: a tuned sweep picks its own seeds), then the command line; a key given
    later replaces one given earlier, so `optimizer.lr=0.01` pins what a preset would search."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from runner.config.rules import ConfigError

    parser = OverridesParser.create()
    for o in parser.parse_overrides(arguments):
        if o.get_key_element() == "seed" and o.is_sweep_override():
            raise ConfigError(
                f"{o.input_line} is not allowed in a tuned sweep (hydra/sweeper=tune): its trials "
                "run with the config's seed and its final runs with fresh seeds after it; allowed: seed=N, hydra.sweeper.seeds=N"
            )
    search_space = OmegaConf.to_container(config.get("search_space") or OmegaConf.create({}))
    space = {k: str(v) for k, v in flatten(search_space).items()}
    params = {k: str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items() if k != "seed"}
    by_key = {}
    for line in [*(f"{k}={v}" for k, v in {**space, **params}.items()), *arguments]:
        (o,) = parser.parse_overrides([line])
        by_key.pop(o.get_key_element(), None)  # the later one goes last, in its place on the command line
        by_key[o.get_key_element()] = line
    return list(by_key.values())


def split(overrides: list[Override]) -> Space:
    """Comma lists are variants; interval, range and choice(...) are the search space."""
    variants, params, fixed = [], {}, []
    for o in overrides:
        value = o.value() if o.is_sweep_override() else None
        if isinstance(value, ChoiceSweep) and value.simple_form:
            variants.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        elif o.is_sweep_override():
            params[o.get_key_element()] = distribution(o)
        else:
            fixed.append(o.input_line)
    return Space([list(v) for v in itertools.product(*variants)], params, fixed)


def checked_jobs(overrides: list[Override]) -> list[list[str]]:
    """Configs to check before a tuned sweep starts: each variant, with each searched key at each
    end of its range (or each of its choices), so that no trial can draw a value the check refuses."""
    space = split(overrides)
    ends = {key: list(d.choices) if hasattr(d, "choices") else [d.low, d.high] for key, d in space.params.items()}
    jobs = []
    for variant in space.variants:
        jobs.append([*space.fixed, *variant])
        jobs += [[*space.fixed, *variant, f"{key}={value}"] for key, values in ends.items() for value in values]
    return jobs


def check_job(cfg) -> None:
    """What a tuned sweep needs of each job's config: a validation split to score its trials on."""
    from runner.config.rules import ConfigError, show

    if not cfg.data.val_fraction:
        raise ConfigError(
            f"data.val_fraction={show(cfg.data.val_fraction)} is not allowed in a tuned sweep (hydra/sweeper=tune): "
            "its trials are scored on the validation split, never on the test set; allowed: 0 < val_fraction < 1"
        )


def phase(name: str, trial: int, params: dict) -> str:
    """PHASE_ENV of a job: `tune/3/optimizer.lr+model.pool` (a trial), `final/3/...` (the best trial's final runs)."""
    return f"{name}/{trial}/{'+'.join(params)}"


def job_tuning(cfg, choices: dict) -> dict | None:
    """metrics.json's `tune` of a job of a tuned sweep: its phase, trial and tuned values (a config
    group's: its choice, from `choices`); None elsewhere."""
    from omegaconf import OmegaConf

    spec = os.environ.get(PHASE_ENV)
    if not spec:
        return None
    name, trial, keys = spec.split("/", 2)
    params = {key: choices[key] if key in choices else OmegaConf.select(cfg, key) for key in keys.split("+") if key}
    return {"phase": name, "trial": int(trial), "params": params}


def label(variant: list[str]) -> str:
    return ",".join(variant) or "all"


def quoted(key: str, value: str) -> str:
    return f"{key}='{value}'"


def startup_trials(trials: int) -> int:
    """How many trials are spread over the search space before TPE draws from what they scored: half
    (2 to 10; with Optuna's default of 10, a budget of 8 would never use TPE)."""
    return min(10, max(2, trials // 2))


def spread(params: dict, n: int, seed: int) -> list[dict]:
    """`n` points that cover the search space evenly (a Latin hypercube): each key's range is cut into
    n equal parts (of its logarithm on a log scale; its choices in turn), every part gets one point,
    at a random place in it, and the keys' parts are paired at random. Random draws of a few points
    often bunch up: 4 log-uniform learning rates can miss a whole decade."""
    import numpy as np
    from optuna.distributions import CategoricalDistribution

    rng = np.random.default_rng([seed, n])
    points = [{} for _ in range(n)]
    for key, d in params.items():
        for point, part in zip(points, rng.permutation(n)):
            u = (part + rng.random()) / n  # in [0, 1)
            if isinstance(d, CategoricalDistribution):
                point[key] = d.choices[int(u * len(d.choices))]
            elif d.log:
                point[key] = float(np.exp(np.log(d.low) + u * (np.log(d.high) - np.log(d.low))))
            else:
                point[key] = d.low + u * (d.high - d.low)
            if not isinstance(d, CategoricalDistribution) and isinstance(d.low, int):  # IntDistribution
                point[key] = min(d.high, d.low + round((point[key] - d.low) / d.step) * d.step)
    return points


def sampler(seed: int, number: int, trials: int, params: dict):
    """The sampler that draws trial `number`. The first `startup_trials` take the points of `spread`;
    the rest are drawn by TPE, seeded from (sampler_seed, number). So a trial's values depend on the
    seed and the trials before it only, and a resumed sweep draws what an uninterrupted one would.
    The variants draw alike: trial n of each starts from the same values."""
    import numpy as np
    import optuna

    n = startup_trials(trials)
    tpe = optuna.samplers.TPESampler(
        seed=int(np.random.SeedSequence([seed, number]).generate_state(1)[0]), n_startup_trials=n
    )
    if number < n:
        return optuna.samplers.PartialFixedSampler(spread(params, n, seed)[number], tpe)
    return tpe


def make_pruner(name: str):
    """`median`: stop a trial whose validation accuracy after an epoch is below the median of the
    earlier trials' at that epoch, once two trials have finished, from the second epoch on (Optuna counts
    the epochs as steps 1, 2, ...; steps below n_warmup_steps=2 are not pruned)."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


def trial_pruner():
    """In a trial of a tuned sweep (TRIAL_ENV set): `prune(epoch, val_acc)`, which reports the
    epoch's validation accuracy to the trial's study and says whether the pruner stops it; else None."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return None
    import optuna

    pruner, storage, study_name, trial_id = spec.split("|")
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
    trial = optuna.trial.Trial(study, int(trial_id))

    def prune(epoch: int, val_acc: float | None) -> bool:
        if val_acc is None:
            return False
        trial.report(val_acc, step=epoch)
        return trial.should_prune()

    return prune


def trial_status(run_dir: Path) -> str | None:
    """The status a trial's run wrote in its metrics.json (completed, pruned, ...), None without one."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def objective(result) -> float | None:
    """A trial's score: its best validation accuracy, None if the job failed or has none."""
    try:
        value = result.return_value
    except Exception:  # noqa: BLE001 the job raised: the launcher keeps the error in the JobReturn
        return None
    return float(value) if value is not None else None
