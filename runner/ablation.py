"""Ablation studies: what each component of a recipe contributes, from paired seeds.

A preset names its components under `ablation`, each with the overrides that turn it `off` and
`on` (a group's choice or key values):

    ablation:
      bn:   {off: {model: plain}, on: {model: bn}}
      flip: {off: {data.augment: false}, on: {data.augment: flip}}

A variant is a state of the components (which are on), named the same in every design (`full`,
`baseline`, `full-bn`, `baseline+flip`), so that a design shares the runs of another in the same
sweep directory. The designs:

- leave_one_out: the full recipe, and the recipe with each component off;
- add_one_in: the baseline (all off), and the baseline with each component on;
- path: from the baseline, at each step the component whose turning on gives the best mean
  validation accuracy (Fawcett & Hoos's ablation path, greedy), up to the full recipe;
- factorial: every state of up to 5 components: main effects and two-way interactions.

The study is recorded in `ablation.json` in its sweep directory (Study); hydra/sweeper=ablation
(hydra_plugins/ablate_ablation) runs it, runner.analysis.ablation judges it.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner.config.rules import ConfigError

STUDY_FILE = "ablation.json"
DESIGNS = ("leave_one_out", "add_one_in", "path", "factorial")
MAX_FACTORIAL = 5  # 2^5 = 32 variants


@dataclass(frozen=True)
class Component:
    name: str
    off: dict  # key: value overrides, e.g. {"model": "plain"}
    on: dict

    def overrides(self, on: bool) -> list[str]:
        return [f"{key}={override_value(value)}" for key, value in (self.on if on else self.off).items()]


def override_value(value, inside: bool = False) -> str:
    """A value as a command-line override writes it (lists and mappings in Hydra's grammar: a
    mapping's keys bare, `{features.0:1.5}`; strings inside them quoted)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v, inside=True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v, inside=True)}" for k, v in value.items()) + "}"
    return f"'{value}'" if inside and isinstance(value, str) else str(value)


YAML_SIDES = {False: "off", True: "on"}  # YAML 1.1 reads the keys off: and on: as booleans


class StudyError(ConfigError):
    """A study that cannot run as declared; the message names the key, the value and what is allowed."""


def components(spec) -> list[Component]:
    """The components of the preset's `ablation` mapping (a DictConfig or a dict), in its order."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
    if not isinstance(plain, dict) or not plain:
        raise StudyError(
            f"ablation={plain!r} is not allowed; allowed: a mapping of components, each with its off and on "
            "overrides: {bn: {off: {model: plain}, on: {model: bn}}}"
        )
    found = []
    for name, given in plain.items():
        sides = {YAML_SIDES.get(k, k): v for k, v in given.items()} if isinstance(given, dict) else given
        if not isinstance(sides, dict) or set(sides) != {"off", "on"}:
            raise StudyError(
                f"ablation.{name}={given!r} is not allowed; allowed: a mapping with exactly the keys off and on, "
                "each of overrides: {off: {model: plain}, on: {model: bn}}"
            )
        for side in ("off", "on"):
            if not isinstance(sides[side], dict) or not sides[side]:
                raise StudyError(
                    f"ablation.{name}.{side}={sides[side]!r} is not allowed; allowed: a mapping of overrides "
                    "(a group's choice or a key's value): {model: bn} or {data.augment: flip}"
                )
        found.append(Component(str(name), sides["off"], sides["on"]))
    return found


def check_design(design: str, count: int) -> None:
    if design not in DESIGNS:
        raise StudyError(f"hydra.sweeper.design={design!r} is not allowed; allowed: {', '.join(DESIGNS)}")
    if design == "factorial" and count > MAX_FACTORIAL:
        raise StudyError(
            f"hydra.sweeper.design=factorial is not allowed for {count} components; allowed: at most "
            f"{MAX_FACTORIAL} (2^{MAX_FACTORIAL} variants), or leave_one_out, add_one_in, path"
        )


# --- variants: states of the components --------------------------------------------------------------


def variant_name(on: frozenset[str], names: list[str]) -> str:
    """The variant's name, the same in every design: full, baseline, full-a-b (a and b off), baseline+a
    (a on), whichever lists fewer components."""
    off = [n for n in names if n not in on]
    if not off:
        return "full"
    if len(off) == len(names):
        return "baseline"
    if len(on) < len(off):
        return "baseline+" + "+".join(n for n in names if n in on)
    return "full-" + "-".join(off)


def state_number(on: frozenset[str], names: list[str]) -> int:
    """A variant's number: its components on as the bits of a number (the first component the lowest)."""
    return sum(1 << i for i, n in enumerate(names) if n in on)


def planned(design: str, names: list[str]) -> list[frozenset[str]]:
    """The variants a design runs from the start (a path adds its steps as it goes)."""
    full = frozenset(names)
    if design == "leave_one_out":
        return [full, *(full - {n} for n in names)]
    if design == "add_one_in":
        return [frozenset(), *(frozenset({n}) for n in names)]
    if design == "factorial":
        return [frozenset(c for i, c in enumerate(names) if mask >> i & 1) for mask in range(2 ** len(names))]
    return [frozenset()]  # path: the baseline first


# --- the study's record and its results --------------------------------------------------------------


@dataclass
class Study:
    """What ablation.json holds: the design, the components, the seeds, the margin, the variants run
    and, for a path, its steps (each the component turned on and the validation accuracies compared)."""

    design: str
    components: list[Component]
    seeds: list[int]
    margin: float = 0.005  # the equivalence margin on test accuracy (hydra.sweeper.margin)
    variants: dict[str, list[str]] = field(default_factory=dict)  # name: the components on
    path: list[dict] = field(default_factory=list)  # {"on": name, "val_acc": {candidate: mean}}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def add(self, on: frozenset[str]) -> str:
        name = variant_name(on, self.names)
        self.variants[name] = [n for n in self.names if n in on]
        return name

    def save(self, sweep_dir: Path) -> None:
        from runner import disk

        record = asdict(self)
        with disk.replacing(sweep_dir / STUDY_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, sweep_dir: Path) -> "Study":
        record = json.loads((sweep_dir / STUDY_FILE).read_text())
        record["components"] = [Component(**c) for c in record["components"]]
        return cls(**record)


def run_dir(sweep_dir: Path, variant: str, seed: int) -> Path:
    return sweep_dir / variant / f"seed={seed}"


# --- the study's jobs ---------------------------------------------------------------------------------

SWEEPER = "hydra_plugins.ablate_ablation.ablation_sweeper.AblationSweeper"


def study_of(config) -> Study:
    """The study the composed sweep config declares: its `ablation` components, and hydra.sweeper's
    design, seeds (from the config's seed on) and margin."""
    sweeper = config.hydra.sweeper
    swept = [key for key in (sweeper.get("params") or {}) if key != "seed"]
    if swept:
        raise StudyError(
            f"hydra.sweeper.params.{swept[0]}={sweeper.params[swept[0]]} is not allowed in an ablation study "
            "(hydra/sweeper=ablation): it varies its components alone; allowed: the components under ablation"
        )
    found = components(config.get("ablation"))
    design = str(sweeper.design)
    check_design(design, len(found))
    seeds = sweeper.seeds
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise StudyError(
            f"hydra.sweeper.seeds={seeds!r} is not allowed; allowed: an integer >= 1 (2 or more for a test)"
        )
    margin = sweeper.margin
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not 0 < margin < 1:
        raise StudyError(f"hydra.sweeper.margin={margin!r} is not allowed; allowed: a number between 0 and 1")
    first = int(config.seed)
    return Study(design, found, list(range(first, first + seeds)), float(margin))


def fixed_overrides(arguments: list[str], study: Study) -> list[str]:
    """The command line's overrides that every job takes: all but the seed (the study's seeds) and the
    keys a component sets (the component's value wins). A swept value is refused: a study varies its
    components alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    set_by_components = {key for c in study.components for key in (*c.on, *c.off)}
    kept = []
    for line, o in zip(arguments, OverridesParser.create().parse_overrides(arguments), strict=True):
        key = o.get_key_element()
        if o.is_sweep_override():
            raise StudyError(
                f"{line} is not allowed in an ablation study (hydra/sweeper=ablation): it varies its components "
                "alone; allowed: one value per key, seeds by hydra.sweeper.seeds=N, components under ablation"
            )
        if key == "seed" or key.lstrip("+~") in set_by_components:
            continue
        kept.append(line)
    return kept


def job(study: Study, fixed: list[str], on: frozenset[str], seed: int) -> list[str]:
    """A job's overrides: the fixed ones, each component's side, the seed, its directory
    (<variant>/seed=<s>) and each component's state under `components` (TensorBoard's HPARAMS columns)."""
    sides = [o for c in study.components for o in c.overrides(c.name in on)]
    states = [f"++components.{c.name}={'on' if c.name in on else 'off'}" for c in study.components]
    subdir = f"hydra.sweep.subdir='{variant_name(on, study.names)}/seed={seed}'"
    return [*fixed, *sides, f"seed={seed}", subdir, *states]


def job_number(study: Study, on: frozenset[str], seed: int) -> int:
    """The same number for the same variant and seed in every design and every rerun of the study (a
    failed job's record in failed/ is kept under it: runner.engine.failures)."""
    return state_number(on, study.names) * len(study.seeds) + study.seeds.index(seed)


def checked_jobs(config, arguments: list[str]) -> list[list[str]]:
    """Configs to check before a study starts: the first seed of the baseline, the full recipe and
    every variant with one component flipped from either, so that each side of every component is
    composed and checked whatever the design runs (a path's later states combine sides checked here)."""
    study = study_of(config)
    fixed = fixed_overrides(arguments, study)
    full = frozenset(study.names)
    states = [full, frozenset(), *(full - {n} for n in study.names), *(frozenset({n}) for n in study.names)]
    return [job(study, fixed, on, study.seeds[0]) for on in dict.fromkeys(states)]


def check_job(cfg, design: str) -> None:
    """A path decides each step on validation accuracy: its jobs need a validation split."""
    from runner.config.rules import show

    if design == "path" and not cfg.data.val_fraction:
        raise StudyError(
            f"data.val_fraction={show(cfg.data.val_fraction)} is not allowed in an ablation path "
            "(hydra.sweeper.design=path): each step is chosen on validation accuracy, never on the test set; "
            "allowed: 0 < val_fraction < 1"
        )
