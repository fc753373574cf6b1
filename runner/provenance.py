"""What produced a run, recorded in its run directory before it trains (`provenance.json`, and
`provenance/` beside it), so that a failed or interrupted run has it too and a rerun can say what
differs:

- ablate's code: the git commit of the checkout it runs from and whether its tree had changes
  (then the diff, `provenance/ablate.diff`); an installed wheel: its package version instead;
- the user's code: every `_target_` of the config whose module lies outside ablate and outside the
  installed packages (a user's `my_parts.TinyNet`): its file, sha256 and a copy
  (`provenance/sources/`);
- the user's configs: the files of `--config-dir` and their sha256;
- the installed distributions and their versions;
- the machine: the CPU model and the flags that decide bf16 (runner.engine.device), the core count,
  the GPU, its driver and CUDA version where there is one.

The data's fingerprints are in metrics.json (`data`). A run resumed from its checkpoint keeps the
record of its first start and adds each later one (`resumed`); a run that had ended is skipped and
its record left as it was.
"""

import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from runner import disk

FILE = "provenance.json"
FOLDER = "provenance"  # the diff and the user's sources, beside provenance.json
VERSION = 1
COMMAND_ENV = "ABLATE_COMMAND"  # the command as the user typed it, set by `run` for its jobs (here or on other hosts)
PRECISION_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides bf16 on a CPU
ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages, for a wheel)
OWN = tuple(ROOT / name for name in ("runner", "models", "optim", "hydra_plugins"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(*args: str) -> str | None:
    """`git *args` in ablate's checkout; None where it is not one (an installed wheel) or git is missing."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


@functools.cache  # once per process: a sweep's jobs run the code, packages and machine it started with
def code() -> tuple[dict, str | None]:
    """ablate's commit and dirty flag (and the diff when dirty), or its package version outside a checkout."""
    commit = git("rev-parse", "HEAD")
    if commit is None:
        try:
            version = importlib.metadata.version("ablate")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"commit": None, "dirty": None, "version": version}, None
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    diff = git("diff", "HEAD") if status.strip() else None
    digest = hashlib.sha256(diff.encode()).hexdigest() if diff else None
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "diff_sha256": digest, "version": None}, diff


@functools.cache
def installed() -> dict[str, str]:
    """Every installed distribution and its version, by name."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def is_users(path: Path) -> bool:
    """A module file of the user's: outside ablate and outside the installed packages and the standard library."""
    path = path.resolve()
    if any(path.is_relative_to(own) for own in OWN):
        return False
    libraries = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    return not any(path.is_relative_to(Path(lib).resolve()) for lib in libraries)


def targets_of(node) -> list[str]:
    """Every `_target_` string in a config (a plain container), in order, once each."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.append(node["_target_"])
        for value in node.values():
            found += targets_of(value)
    elif isinstance(node, list):
        for value in node:
            found += targets_of(value)
    return list(dict.fromkeys(found))


def user_modules(config: dict) -> dict[str, dict]:
    """For each `_target_` whose module is the user's: its module's file and sha256, by module name."""
    from runner.config.targets import locate

    found = {}
    for target in targets_of(config):
        try:
            obj = locate(target)
        except Exception:  # noqa: BLE001, S112 a target that does not import was refused before; nothing to record
            continue
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        file = getattr(module, "__file__", None)
        if file and is_users(Path(file)) and module.__name__ not in found:
            found[module.__name__] = {"file": str(Path(file).resolve()), "sha256": sha256(Path(file))}
    return found


def config_files(folder: Path | None) -> dict[str, str]:
    """The YAML files of the user's config folder (`--config-dir`) and their sha256, by relative path."""
    if folder is None or not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*.yaml")) if p.is_file()}


@functools.cache
def cpu() -> dict:
    """The CPU's model, the flags that decide its precision, and the core count."""
    model, flags = platform.processor() or None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in PRECISION_FLAGS if f in flags], "cores": os.cpu_count()}


@functools.cache
def gpu() -> dict | None:
    """The GPU's name, its driver and the CUDA version torch was built with, where there is one."""
    import torch

    if not torch.cuda.is_available():
        return None
    driver = None
    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        driver = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None
    return {
        "name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "driver": driver,
        "cuda": torch.version.cuda,
    }


def collect(config: dict, config_dir: Path | None) -> tuple[dict, str | None]:
    """The provenance record of a run of `config` (resolved, plain), and ablate's diff when dirty."""
    ablate, diff = code()
    record = {
        "version": VERSION,
        "ablate": dict(ablate),
        "user_modules": user_modules(config),
        "config_dir": {"path": str(config_dir.resolve()), "files": config_files(config_dir)} if config_dir else None,
        "python": platform.python_version(),
        "packages": dict(installed()),
        "machine": {"platform": platform.platform(), "cpu": dict(cpu()), "gpu": gpu() and dict(gpu())},
        "command": os.environ.get(COMMAND_ENV) or (" ".join(["run", *sys.argv[1:]]) if sys.argv else None),
    }
    return record, diff


def write(run_dir: Path, config: dict, config_dir: Path | None) -> dict:
    """provenance.json in `run_dir`, with the diff and copies of the user's modules under provenance/."""
    record, diff = collect(config, config_dir)
    folder = run_dir / FOLDER
    if diff:
        write_diff(folder / "ablate.diff", diff)
    for name, module in record["user_modules"].items():
        (folder / "sources").mkdir(parents=True, exist_ok=True)
        with disk.replacing(folder / "sources" / f"{name}.py") as tmp:
            tmp.write_bytes(Path(module["file"]).read_bytes())
    with disk.replacing(run_dir / FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_diff(path: Path, diff: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk.replacing(path) as tmp:
        tmp.write_text(diff)


def add_resumption(run_dir: Path, first: dict, config: dict, config_dir: Path | None) -> dict:
    """A run resumed from its checkpoint keeps the record of its first start; this start is added to
    its `resumed` list: when, ablate's code (its diff as provenance/ablate.resumed-N.diff), the
    command and what differs from the first record (`differences`)."""
    record, diff = collect(config, config_dir)
    resumed = first.setdefault("resumed", [])
    if diff:
        write_diff(run_dir / FOLDER / f"ablate.resumed-{len(resumed) + 1}.diff", diff)
    resumed.append(
        {
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "ablate": record["ablate"],
            "command": record["command"],
            "differences": differences(first, record),
        }
    )
    with disk.replacing(run_dir / FILE) as tmp:
        tmp.write_text(json.dumps(first, indent=2) + "\n")
    return first


def read(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / FILE).read_text())
    except (OSError, ValueError):
        return None


def differences(recorded: dict | None, now: dict) -> list[str]:
    """What differs between a run's recorded provenance and this machine's now, one line each: the
    commit or its dirty state, a user module's hash, a config file's, the packages, the Python, the
    CPU's precision flags, the GPU. A run recorded before provenance existed: one line saying so."""
    if recorded is None:
        return ["no provenance.json: the run was made before ablate recorded what produced it"]
    lines = []
    was, now_code = recorded.get("ablate", {}), now["ablate"]
    if was.get("commit") != now_code["commit"]:
        lines.append(f"ablate's commit: {was.get('commit')} then, {now_code['commit']} now")
    if bool(was.get("dirty")) != bool(now_code["dirty"]) or was.get("diff_sha256") != now_code.get("diff_sha256"):
        then = "uncommitted changes (provenance/ablate.diff)" if was.get("dirty") else "a clean tree"
        now_state = "uncommitted changes" if now_code["dirty"] else "a clean tree"
        lines.append(
            f"ablate's tree: {then} then, {now_state} now"
            + (" (other changes)" if was.get("dirty") and now_code["dirty"] else "")
        )
    if was.get("version") != now_code["version"]:
        lines.append(f"ablate's version: {was.get('version')} then, {now_code['version']} now")
    for name, module in (recorded.get("user_modules") or {}).items():
        current = now["user_modules"].get(name)
        if current is None:
            lines.append(f"user module {name} ({module['file']}): not used now")
        elif current["sha256"] != module["sha256"]:
            lines.append(
                f"user module {name} ({current['file']}): changed since (sha256 {module['sha256'][:12]} then, {current['sha256'][:12]} now)"
            )
    then_files = (recorded.get("config_dir") or {}).get("files", {})
    now_files = (now.get("config_dir") or {}).get("files", {})
    for name in sorted(then_files.keys() | now_files.keys()):
        if then_files.get(name) != now_files.get(name):
            lines.append(
                f"config file {name}: {'changed' if name in then_files and name in now_files else 'only ' + ('then' if name in then_files else 'now')}"
            )
    then_packages, now_packages = recorded.get("packages", {}), now["packages"]
    changed = [
        f"{n} {then_packages.get(n)} → {now_packages.get(n)}"
        for n in sorted(then_packages.keys() | now_packages.keys())
        if then_packages.get(n) != now_packages.get(n)
    ]
    if changed:
        lines.append(f"packages ({len(changed)}): " + ", ".join(changed[:8]) + (", ..." if len(changed) > 8 else ""))
    if recorded.get("python") != now["python"]:
        lines.append(f"Python: {recorded.get('python')} then, {now['python']} now")
    then_cpu, now_cpu = recorded.get("machine", {}).get("cpu", {}), now["machine"]["cpu"]
    if then_cpu.get("flags") != now_cpu["flags"] or then_cpu.get("model") != now_cpu["model"]:
        lines.append(
            f"CPU: {then_cpu.get('model')} {then_cpu.get('flags')} then, {now_cpu['model']} {now_cpu['flags']} now"
        )
    then_gpu, now_gpu = recorded.get("machine", {}).get("gpu"), now["machine"]["gpu"]
    if then_gpu != now_gpu:
        lines.append(f"GPU: {then_gpu} then, {now_gpu} now")
    return lines


def how_to_reproduce(run_dir: Path) -> str | None:
    """One line: the commit the run was made at (and whether its tree had changes) and its command;
    None for a run without provenance."""
    record = read(run_dir)
    if record is None:
        return None
    ablate = record.get("ablate", {})
    if ablate.get("commit"):
        code = f"ablate {ablate['commit'][:12]}" + (
            " with uncommitted changes (provenance/ablate.diff)" if ablate.get("dirty") else ""
        )
    else:
        code = f"ablate {ablate.get('version') or 'of unknown version'}"
    return f"{code}; {record.get('command')}"
