"""Places where Hydra repeats work that one answer serves, each taken only where Hydra's internals
are as expected (otherwise Hydra is left as it is):

- `one_composition_per_run`: a single run composes its config once instead of twice;
- `one_composition_per_job`: a sweep composes each job's config once instead of three times;
- `one_repository_for_help`: `run --help` lists the config groups from one copy of the config
  repository instead of one copy per question.
"""

_RUN_MODE_OVERRIDE = "hydra.mode=RUN"  # what Hydra appends when no config sets hydra.mode


def one_composition_per_run() -> None:
    """Hydra composes a run's config twice: once to read `hydra.mode` (in multirun mode, errors
    swallowed), then again for the run itself (0.13 s each here). Here the first composition is
    made the way the run makes it and kept for the run, which then composes nothing. Where that
    composition fails (a sweep's values without -m under a preset that sets hydra.mode=MULTIRUN,
    a config to refuse), Hydra's own way follows, and its errors are Hydra's. For single runs only
    (`run` without -m): a sweep composes each job anyway."""
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    get_mode, compose_config = Hydra.get_mode, Hydra.compose_config
    if getattr(get_mode, "__name__", "") != "get_mode" or getattr(compose_config, "__name__", "") != "compose_config":
        return
    kept: dict = {}  # "overrides" (the list get_mode was given) and "config", until the run takes it

    def get_mode_for_run(self, config_name, overrides):
        kept.clear()
        try:
            cfg = compose_config(self, config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN)
        except Exception:  # noqa: BLE001  Hydra's own get_mode swallows every error; the run reports it
            return get_mode(self, config_name, overrides)
        if cfg.hydra.mode in (None, RunMode.RUN):
            kept.update(config_name=config_name, overrides=list(overrides), config=cfg)
        return cfg.hydra.mode

    def compose_for_run(self, config_name, overrides, run_mode, **kwargs):
        cfg = take(config_name, overrides) if run_mode == RunMode.RUN else None
        if cfg is None:
            return compose_config(self, config_name, overrides, run_mode, **kwargs)
        loader = self.config_loader
        loader.load_configuration = lambda **_: cfg  # Hydra's own compose_config, on the kept config
        try:
            return compose_config(self, config_name, overrides, run_mode, **kwargs)
        finally:
            del loader.load_configuration

    def take(config_name, overrides):
        """The kept config if it is the one Hydra asks for now: the same config and overrides, or
        those and the `hydra.mode=RUN` Hydra appends when no config sets the mode."""
        if not kept or kept.pop("config_name") != config_name:
            kept.clear()
            return None
        before, cfg = kept.pop("overrides"), kept.pop("config")
        if list(overrides) == before:
            return cfg
        if list(overrides) == [*before, _RUN_MODE_OVERRIDE] and cfg.hydra.mode is None:
            cfg.hydra.mode = RunMode.RUN  # as composing with the override does
            cfg.hydra.overrides.hydra.append(_RUN_MODE_OVERRIDE)
            return cfg
        return None

    Hydra.get_mode, Hydra.compose_config = get_mode_for_run, compose_for_run


# The job configs a sweep keeps at most, the oldest going first: a batch of up to this many jobs is
# composed once per job.
KEPT_JOBS = 256


def one_composition_per_job() -> None:
    """A sweep composes each job's config three times: ablate checks every job's config before
    anything is written (runner.cli.app.CheckFirst), Hydra's sweeper composes each batch of jobs to
    check it, and the launcher composes each job to run it (0.13 s each here). Here each job's
    composition is kept and the next asks get a copy of it, with the sweep's resolved values
    (Hydra's copy_cache) as Hydra gives them. A job's config is the same whenever it is composed
    in one process: the same config files, the same overrides."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    load_sweep_config = ConfigLoaderImpl.load_sweep_config
    if getattr(load_sweep_config, "__name__", "") != "load_sweep_config":
        return
    kept: dict = {}

    def load_job_config(self, master_config, sweep_overrides):
        key = (
            master_config.hydra.job.config_name,
            tuple(master_config.hydra.overrides.hydra),
            tuple(sweep_overrides),
        )
        if key not in kept:
            if len(kept) >= KEPT_JOBS:
                del kept[next(iter(kept))]
            kept[key] = load_sweep_config(self, master_config, sweep_overrides)
        cfg = copy.deepcopy(kept[key])
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    ConfigLoaderImpl.load_sweep_config = load_job_config


def one_repository_for_help() -> None:
    """`run --help` lists the config groups through Hydra's config loader, which copies its whole
    config repository for every question about a group (84 deep copies: most of the command's time).
    A help text is about one config: here one copy answers them all."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.object_type import ObjectType

    repository_for = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if repository_for is None:
        return
    repositories = {}

    def get_group_options(self, group_name, results_filter=ObjectType.CONFIG, config_name=None, overrides=None):
        key = (id(self), config_name, tuple(overrides or ()))
        if key not in repositories:
            repositories[key] = repository_for(self, config_name, list(overrides or ()))[1]
        return repositories[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options
