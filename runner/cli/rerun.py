"""`rerun DIR`: a run made again from its directory alone, into a new directory, and a verdict.

A run directory holds what made it: Hydra's `.hydra/overrides.yaml` (the run's own overrides,
also of a sweep's job), `.hydra/hydra.yaml` (the folder it ran in, its `--config-dir`) and
`provenance.json` (runner.provenance). `rerun` lists what differs from the recorded provenance
before it trains (the commit, a user module's hash, packages, CPU flags: why a mismatch may come),
runs `run` with the same overrides in the same folder (with this ablate's code, also for a run made
from another checkout), and ends with a verdict: `bitwise identical`
(every final weight and the test accuracy), or the largest difference in the final weights and the
test accuracies of both. A sweep or a study (a directory of run directories) reruns job by job, and
its summary is compared.

    rerun outputs/runs/2026-12-06_10-00-00_bn-relu-momentum-cosine
    rerun outputs/sweeps/2026-12-06_10-00-00 --out outputs/reruns/that-sweep
"""

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from runner import provenance
from runner.ablation import STUDY_FILE
from runner.tune import TRIAL_ENV

IDENTICAL = "bitwise identical"


def recorded_run(run_dir: Path) -> tuple[list[str], Path, Path | None]:
    """The run's overrides, the folder it ran in and its `--config-dir`, from Hydra's files."""
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    hydra = (yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}).get("hydra", {})
    runtime = hydra.get("runtime", {})
    config_dir = next(
        (Path(s["path"]) for s in runtime.get("config_sources", []) if s.get("provider") == "command-line"), None
    )
    env = {k: v for k, v in (hydra.get("job", {}).get("env_set") or {}).items() if k != TRIAL_ENV}
    if env:  # a tuned sweep's phase (validation only for a trial); not its pruner, which reports to the study
        overrides = [*overrides, *(f"++hydra.job.env_set.{k}='{v}'" for k, v in env.items())]
    return list(overrides), Path(runtime.get("cwd") or "."), config_dir


def final_weights(run_dir: Path) -> dict | None:
    """The run's final weights: model.safetensors, else its last checkpoint's model."""
    import torch

    if (run_dir / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(run_dir / "model.safetensors"))
    last = run_dir / "checkpoints" / "last.pt"
    return torch.load(last, weights_only=True)["model"] if last.exists() else None


def test_acc(run_dir: Path) -> float | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("test_acc")
    except (OSError, ValueError):
        return None


def verdict(before: Path, after: Path) -> str:
    """`bitwise identical`, or the largest difference of the final weights and both test accuracies."""
    import torch

    a, b = final_weights(before), final_weights(after)
    accs = f"test accuracy {test_acc(before)} then, {test_acc(after)} now"
    if a is None or b is None:
        return f"not compared: {'the original' if a is None else 'the rerun'} has no final weights; {accs}"
    if a.keys() != b.keys():
        return f"differs: the weights are of other models ({len(a)} and {len(b)} tensors); {accs}"
    largest, where = 0.0, None
    for name in a:
        if a[name].shape != b[name].shape:
            return f"differs: {name} has shape {tuple(a[name].shape)} then, {tuple(b[name].shape)} now; {accs}"
        if not torch.equal(a[name], b[name]):
            gap = (a[name].double() - b[name].double()).abs().max().item()
            if where is None or gap > largest:
                largest, where = gap, name
    if where is None and test_acc(before) == test_acc(after):
        return f"{IDENTICAL} (test accuracy {test_acc(after)})"
    weights = f"largest weight difference {largest:.3g} ({where})" if where else "weights identical"
    return f"differs: {weights}; {accs}"


def check_provenance(run_dir: Path, overrides: list[str], config_dir: Path | None) -> list[str]:
    """What differs between the run's recorded provenance and this machine's now."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    now, _ = provenance.collect(config, config_dir)
    recorded = provenance.read(run_dir)
    resumed = [
        f"resumed {entry['at']} with other code or machine than it started with: {'; '.join(entry['differences'])}"
        for entry in (recorded or {}).get("resumed", [])
        if entry["differences"]
    ]
    return resumed + provenance.differences(recorded, now)


def rerun_one(run_dir: Path, out: Path) -> tuple[int, str]:
    """`run_dir` made again in `out`: the process's exit code and the verdict."""
    overrides, cwd, config_dir = recorded_run(run_dir)
    sys.path.insert(0, str(cwd))  # the user's modules, as the run imported them (runner.cli.app.importable_cwd)
    try:
        differing = check_provenance(run_dir, overrides, config_dir)
    finally:
        sys.path.remove(str(cwd))
    print(f"rerun of {run_dir} into {out}")
    for line in differing or ["provenance: the same commit, user modules, configs, packages and machine"]:
        print(f"  {line}")
    # this ablate's code, the one the provenance was checked against, first on the path, and not a
    # `runner` package in the run's folder (another checkout): -P leaves the folder off the front of
    # the path; `run` adds it at the end, for the user's modules
    command = [sys.executable, "-P", "-m", "runner", *overrides, f"hydra.run.dir='{out.resolve()}'"]
    if config_dir is not None:
        command[4:4] = ["--config-dir", str(config_dir)]
    path = os.pathsep.join([str(provenance.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONPATH": path}, check=False)
    said = verdict(run_dir, out)
    print(f"  verdict: {said}")
    return result.returncode, said


def run_dirs(path: Path) -> list[Path]:
    """The run directories at or below `path`: those with Hydra's overrides.yaml, in order."""
    if (path / ".hydra" / "overrides.yaml").exists():
        return [path]
    return sorted(p.parent.parent for p in path.rglob(".hydra/overrides.yaml"))


def summary_rows(folder: Path) -> dict[str, str]:
    """Each run's test accuracy in a sweep's summary.csv, by its path below the sweep directory."""
    import csv

    with open(folder / "summary.csv") as f:
        return {
            Path(row["run"]).resolve().relative_to(folder.resolve()).as_posix(): row["test_acc"]
            for row in csv.DictReader(f)
        }


def compare_summaries(before: Path, after: Path) -> list[str]:
    """The runs whose test accuracy differs between the two sweeps' summary.csv, one line each."""
    if not (before / "summary.csv").exists() or not (after / "summary.csv").exists():
        return [f"not compared: no summary.csv in {before if not (before / 'summary.csv').exists() else after}"]
    then, now = summary_rows(before), summary_rows(after)
    return [
        f"{k}: {then.get(k)} then, {now.get(k)} now"
        for k in sorted(then.keys() | now.keys())
        if then.get(k) != now.get(k)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rerun", description="Make a run, a sweep or a study again from its directory, and compare."
    )
    parser.add_argument("path", type=Path, help="a run directory, or a sweep's (every run below it is made again)")
    parser.add_argument("--out", type=Path, help="where (default: outputs/reruns/<name>_<now>)")
    args = parser.parse_args(argv)
    runs = run_dirs(args.path) if args.path.is_dir() else []
    if not runs:
        print(f"rerun: PATH={args.path} holds no run directory; allowed: a run or sweep directory", file=sys.stderr)
        return 2
    out = args.out or Path("outputs", "reruns", f"{args.path.resolve().name}_{datetime.now():%Y-%m-%d_%H-%M-%S}")
    verdicts, failed = [], 0
    for run_dir in runs:
        target = out if runs == [args.path] else out / run_dir.relative_to(args.path)
        code, said = rerun_one(run_dir, target)
        failed += code != 0
        verdicts.append(said)
    if runs != [args.path]:
        from runner.analysis.report import build_report

        build_report([out], out, quiet=True, by_folder=(args.path / STUDY_FILE).exists())
        identical = sum(v.startswith(IDENTICAL) for v in verdicts)
        print(f"{identical} of {len(runs)} runs {IDENTICAL}")
        differing = compare_summaries(args.path, out)
        print("summary: " + ("the same test accuracies" if not differing else "; ".join(differing)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
