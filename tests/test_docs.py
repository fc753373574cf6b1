"""The commands and links of README.md and docs/*.md work as written.

- Every `run` command in a fenced block (and in an inline code span), also the one under
  `torchrun -m runner`, is composed by Hydra from configs/ (and the user's --config-dir) and passes
  the checks `run` makes before it writes anything, without training: the `hydra.callbacks` of the
  composed config (CheckFirst: runner.config.schema.validate), called as Hydra calls them, on the
  run; on jobs of a sweep in which every swept value occurs (a tuned sweep: all of it, as `run -m`
  checks it). A placeholder (NAME) takes each value the docs give it. A command the docs show
  failing (`error: ...` after it) is run for real and must fail with exactly that line and exit
  code 2; `--help` and `--cfg job` run for real too.
- `make <target>`: the target is in the Makefile. `report`, `tensorboard`, `torchrun`,
  `python benchmarks/...`: run cheaply (`--help`, and every option the docs give is in it), or
  named in EXERCISED_ELSEWHERE with the test or script that runs them.
- Relative links (and their #anchors) point to files and headings that exist; README.md stays short.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from helpers import ROOT, cli_env
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 230
SHELL_BLOCKS = ("bash", "sh", "shell", "console")  # their lines are commands (console: after `$ `)
LISTING_BLOCKS = (
    "",
    "text",
)  # listings; a line in them that starts like a command is one (```output: a program's output)
RUN = ("run", ".venv/bin/run")

# Commands with a placeholder (NAME), and the values docs/claims.md puts in its place.
CLAIMS = ("activations", "leaky_small", "normalization", "residual", "optimizers", "schedules")  # every one of them
CLAIMS_SHORT = ("activations", "residual")  # 3 epochs
CLAIMS_TUNED = ("optimizers", "schedules", "normalization")
PLACEHOLDERS = {
    "run -m experiment=NAME data.train_size=10000 data.val_fraction=0.05": [c for c in CLAIMS if c not in CLAIMS_SHORT],
    "run -m experiment=NAME data.train_size=10000 data.val_fraction=0.05 trainer.max_epochs=3": CLAIMS_SHORT,
    "run -m experiment=NAME data.train_size=10000 data.val_fraction=0.05 trainer.max_epochs=5": CLAIMS_TUNED,
    "run -m experiment=NAME hydra/sweeper=tune data.train_size=10000 data.val_fraction=0.05 trainer.max_epochs=5": CLAIMS_TUNED,
}

# Commands the docs show that this test does not run itself (they train, need other machines, or
# read what a sweep wrote): the test or script that runs them, and a string it holds to do so.
EXERCISED_ELSEWHERE = {
    "rerun outputs/runs/2026-11-25_10-00-00_plain-relu-momentum-cosine": (
        "tests/test_provenance.py",
        "def test_a_rerun_from_its_directory_is_bitwise_identical",
    ),
    "report outputs/sweeps/2026-11-25_10-00-00 outputs/runs/2026-11-25_11-*_bn-* --out outputs/cmp": (
        "tests/test_report.py",
        '"--out"',
    ),
    ".venv/bin/torchrun --standalone --nproc_per_node=4 -m runner model=residual data=cifar10 trainer.sync_bn=true": (
        "tests/test_distributed.py",
        "trainer.sync_bn=true",
    ),
    ".venv/bin/torchrun --standalone --nproc_per_node=4 -m runner -m seed=0,1,2": (
        "tests/test_distributed.py",
        "def test_a_sweep_under_torchrun",
    ),
    "torchrun --standalone --nproc_per_node=2 -m runner experiment=fmnist_speed trainer.sync_bn=true": (
        "tests/test_distributed.py",
        "nproc=2",
    ),
    "torchrun -m runner ...": ("tests/helpers.py", '"torch.distributed.run"'),
    ".venv/bin/optuna-dashboard sqlite:///outputs/sweeps/<date>_<time>/study.db": (
        "tests/test_tune.py",
        "study.db",
    ),  # the studies it opens; optuna-dashboard itself is not a dependency
    "run ... hydra.run.dir=<run dir>": ("tests/test_resume.py", "hydra.run.dir={run_dir}"),
    "run -m ... hydra.sweep.dir=<sweep dir>": ("tests/test_sweep_resume.py", "hydra.sweep.dir={sweep_dir}"),
    "report PATH [PATH ...] [--out DIR]": ("tests/test_report.py", "report_main("),
    "report PATH ...": ("tests/test_report.py", "report_main("),
    "run -m experiment=NAME": ("tests/test_validation.py", "def test_every_preset_and_every_job_of_its_sweep"),
    "pip install /path/to/ablate": ("tests/test_install.py", '"install", "--no-index"'),  # the wheel of the checkout
    ".venv/bin/python scripts/torchvision_models.py": ("tests/test_third_party.py", '"torchvision_models.py"'),
}

# Commands the docs show that nothing runs, and why.
NOT_RUN = {
    ".venv/bin/pip install optuna-dashboard": "installs from PyPI a viewer that ablate does not depend on",
    'pip install "git+<url of this repository>"': "installs from a git server the wheel tests/test_install.py builds",
    "pip install -e '.[timm]'": "installs timm from PyPI; the Makefile's .venv has it (.[test,timm])",
    ".venv/bin/pip install -e '.[peers]' -c constraints.txt": "installs Lightning from PyPI, for the peer benchmark alone",
}

# An inline code span in these docs is run from this folder (the docs' own `cd`).
INLINE_CWD = {"docs/own-parts.md": "examples/own_parts"}


@dataclass(frozen=True)
class Command:
    where: str  # doc:line
    text: str  # as written, one line, without its comment
    cwd: str  # relative to the repository, after the `cd`s before it in its block
    error: str | None  # the `error: ...` line the docs show it printing, if any

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


def strip_comment(line: str) -> tuple[str, str]:
    """`code  # comment` -> (code, comment), a # inside quotes or a word being no comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def first_word(text: str) -> str:
    return text.split(maxsplit=1)[0] if text.strip() else ""


TOOLS = ("report", "rerun", "tensorboard", ".venv/bin/tensorboard")  # checked by their --help
KNOWN = {*RUN, *TOOLS, "make", "cd", "torchrun", ".venv/bin/torchrun", ".venv/bin/python", ".venv/bin/pip",
         ".venv/bin/optuna-dashboard", "pip"}  # fmt: skip


def fenced_commands(doc: Path) -> list[Command]:
    name = str(doc.relative_to(ROOT))
    lines = doc.read_text().splitlines()
    found, lang, cwd, i = [], None, ".", 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            lang, cwd = (stripped[3:].strip() if lang is None else None), "."
            i += 1
            continue
        if lang is None or lang not in SHELL_BLOCKS + LISTING_BLOCKS:
            i += 1
            continue
        start, line = i, stripped
        if lang == "console":
            if not line.startswith("$ "):
                i += 1
                continue
            line = line[2:]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        code, comment = strip_comment(line)
        error = None
        if lang == "console" and i + 1 < len(lines) and lines[i + 1].startswith("error: "):
            error = lines[i + 1].removeprefix("error: ")
        elif comment.startswith("error: "):
            error = comment.removeprefix("error: ")
        i += 1
        if not code or (lang in LISTING_BLOCKS and first_word(code) not in KNOWN):
            continue
        found.append(Command(f"{name}:{start + 1}", code, cwd, error))
        if first_word(code) == "cd":
            cwd = os.path.normpath(os.path.join(cwd, code.split(maxsplit=1)[1]))
    return found


def without_fences(text: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.DOTALL | re.MULTILINE)


def inline_commands(doc: Path) -> list[Command]:
    """Code spans that are commands (they may wrap over two lines of the source)."""
    name = str(doc.relative_to(ROOT))
    text = without_fences(doc.read_text())
    found = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        words = span.split()
        if len(words) < 2 or words[0] not in KNOWN - {"cd"}:
            continue
        if words[0] in RUN and not re.fullmatch(r"-m|--\S+|\S*=\S*|\.\.\.", words[1]):
            continue  # prose, not a command ("run the same command")
        line = text.count("\n", 0, m.start()) + 1
        found.append(Command(f"{name}:{line}", span, INLINE_CWD.get(name, "."), None))
    return found


COMMANDS = [c for doc in DOCS for c in [*fenced_commands(doc), *inline_commands(doc)]]


def run_args(c: Command) -> list[str] | None:
    """The arguments of `run` in a command: of `run ...`, or of `torchrun ... -m runner ...`."""
    argv = c.argv
    if argv[0] in RUN:
        return argv[1:]
    if argv[0].endswith("torchrun") and "runner" in argv:
        at = argv.index("runner")
        assert argv[at - 1] == "-m", c
        return argv[at + 1 :]
    return None


def exercised_elsewhere(c: Command) -> bool:
    return c.text in EXERCISED_ELSEWHERE or c.text in NOT_RUN


def expand(c: Command) -> list[list[str]]:
    """The argument lists of `run` a command stands for: itself, or one per value of its NAME."""
    args = run_args(c)
    if "experiment=NAME" not in args:
        return [args]
    return [[f"experiment={name}" if a == "experiment=NAME" else a for a in args] for name in PLACEHOLDERS[c.text]]


def placeholder(c: Command) -> bool:
    """A command with a stand-in for a value, unless PLACEHOLDERS says what to put in its place."""
    return ("<" in c.text or "..." in c.text or "NAME" in c.text) and c.text not in PLACEHOLDERS


def distinct(commands: list[Command]) -> list[Command]:
    """One of each command (and folder): the first place the docs show it."""
    seen = {}
    for c in commands:
        seen.setdefault((c.text, c.cwd, c.error), c)
    return list(seen.values())


RUN_COMMANDS = distinct([c for c in COMMANDS if run_args(c) is not None and not placeholder(c)])
CHECKED = [c for c in RUN_COMMANDS if c.error is None and not {"--help", "--cfg"} & set(run_args(c))]
REFUSED = [c for c in RUN_COMMANDS if c.error is not None]
REAL = [c for c in RUN_COMMANDS if c.error is None and {"--help", "--cfg"} & set(run_args(c))]


def ids(commands):
    return [c.where for c in commands]


# --- Commands run in a subprocess, started together ---------------------------------------------


def subprocess_jobs() -> dict[tuple, tuple[list[str], str]]:
    """key -> (argv, cwd): the real `run` of the commands that fail or print, `--help` of the tools."""
    jobs = {}
    for c in REFUSED + REAL:
        jobs[("run", c.where)] = ([sys.executable, "-m", "runner", *run_args(c)], c.cwd)
    for tool in tool_scripts():
        jobs[("help", tool)] = ([*tool_argv(tool), "--help"], ".")
    return jobs


def tool_scripts() -> set[str]:
    """The programs whose options the docs use: benchmarks/*.py, tensorboard, report."""
    found = set()
    for c in COMMANDS:
        argv = c.argv
        if argv[0] == ".venv/bin/python" and len(argv) > 1 and argv[1].startswith("benchmarks/"):
            found.add(argv[1])
        elif argv[0] in TOOLS:
            found.add(argv[0])
    return found


def tool_argv(tool: str) -> list[str]:
    if tool.startswith("benchmarks/"):
        return [sys.executable, tool]
    return [str(Path(sys.executable).parent / Path(tool).name)]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every subprocess of this file, one at a time in the background, while the other tests run.
    `run` runs in an empty folder, or a copy of the one the docs `cd` to: nothing lands in the repository."""
    folders = {".": tmp_path_factory.mktemp("here")}
    for cwd in {c.cwd for c in REFUSED + REAL} - {"."}:
        folders[cwd] = tmp_path_factory.mktemp("cd") / "here"
        shutil.copytree(ROOT / cwd, folders[cwd])

    def one(key, argv, cwd):
        where = folders[cwd] if key[0] == "run" else ROOT / cwd
        return subprocess.run(argv, cwd=where, env=cli_env(), capture_output=True, text=True, timeout=120, check=False)

    pool = ThreadPoolExecutor(max_workers=1)
    futures = {key: pool.submit(one, key, argv, cwd) for key, (argv, cwd) in subprocess_jobs().items()}
    yield futures
    pool.shutdown(wait=True)


def test_subprocesses_start_first(started):
    """Starts the module's subprocesses (a fixture), so that they run while the compositions below do."""
    assert started


# --- `run` commands, composed and checked --------------------------------------------------------


@pytest.fixture
def in_folder(monkeypatch, tmp_path):
    """Chdir to the command's folder, as the docs' `cd` does: a copy of examples/own_parts, else a
    fresh folder (nothing composing or checking does may land in the repository)."""

    def go(cwd: str) -> Path:
        folder = tmp_path
        if cwd != ".":
            shutil.copytree(ROOT / cwd, tmp_path / "here")
            folder = tmp_path / "here"
        monkeypatch.chdir(folder)
        monkeypatch.syspath_prepend(str(folder))  # the current directory is importable, as `run` makes it
        return folder

    return go


def command_line(args: list[str], folder: Path) -> tuple[list[str], bool]:
    """`run`'s arguments as Hydra's overrides (--config-dir as the search path it adds), and -m."""
    overrides, words = [], iter(args)
    for word in words:
        if word in ("--config-dir", "-cd") or word.startswith("--config-dir="):
            user = word.split("=", 1)[1] if "=" in word else next(words)
            overrides.append(f"hydra.searchpath=[file://{(folder / user).resolve()}]")
        elif word not in ("-m", "--multirun"):
            assert not word.startswith("-"), f"an option this test does not know: {word}"
            overrides.append(word)
    return overrides, bool({"-m", "--multirun"} & set(args))


def before_writing(cfg, multirun: bool) -> None:
    """The config's hydra.callbacks, called as Hydra calls them before it writes anything
    (CheckFirst: schema.validate; a refusal prints its line and exits 2)."""
    from hydra.utils import instantiate

    for callback in cfg.hydra.callbacks.values():
        hooks = instantiate(callback)
        (hooks.on_multirun_start if multirun else hooks.on_run_start)(config=cfg)


def covering(jobs: list[list[str]]) -> list[list[str]]:
    """Few jobs in which every value of every swept key occurs (greedily: the job with the most
    values not yet seen, first): 3 for `model=plain,bn,residual seed=0,1,2`."""
    left, seen, chosen = [list(job) for job in jobs], set(), []
    while left:
        best = max(left, key=lambda job: len(set(job) - seen))
        if not set(best) - seen:
            break
        chosen.append(best)
        seen |= set(best)
        left.remove(best)
    return chosen


def check_run(args: list[str], folder: Path) -> int:
    """`run *args` up to where it would write: Hydra composes the config and the callbacks check
    it. A sweep of Hydra's basic sweeper: its jobs (runner.cli.app.sweep_jobs) that cover every
    swept value, each composed and checked as the run it is; a sweep under another sweeper (tune):
    as `run -m` checks it, all of it. How many configs were checked."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from runner.cli import app

    overrides, multirun = command_line(args, folder)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(app.CONFIGS), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            cfg = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
            if not multirun or cfg.hydra.sweeper.get("_target_") != app.BASIC_SWEEPER:
                before_writing(cfg, multirun)
                return 1
            jobs = covering(app.sweep_jobs(cfg))
            for job in jobs:
                job_cfg = loader.load_configuration("config", [*cfg.hydra.overrides.hydra, *job], run_mode=RunMode.RUN)
                before_writing(job_cfg, multirun=False)
            return len(jobs)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("command", CHECKED, ids=ids(CHECKED))
def test_a_documented_run_command_composes_and_passes_the_checks(command, in_folder, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    folder = in_folder(command.cwd)
    for args in expand(command):
        try:
            assert check_run(args, folder) >= 1
        except SystemExit as e:
            pytest.fail(f"{command.where}: run {shlex.join(args)} exits {e.code}: {capsys.readouterr().err.strip()}")
        except (HydraException, OmegaConfBaseException) as e:
            pytest.fail(f"{command.where}: run {shlex.join(args)} does not compose: {' '.join(str(e).split())}")


@pytest.mark.parametrize("command", REFUSED, ids=ids(REFUSED))
def test_a_documented_refusal_is_the_line_run_prints(command, started):
    result = started[("run", command.where)].result()
    assert (result.returncode, result.stderr) == (2, f"error: {command.error}\n"), result.stdout


@pytest.mark.parametrize("command", REAL, ids=ids(REAL))
def test_a_documented_help_or_cfg_runs(command, started):
    result = started[("run", command.where)].result()
    assert result.returncode == 0, result.stderr
    args = run_args(command)
    if "--cfg" in args:
        assert "model:" in result.stdout and "optimizer:" in result.stdout
    if "--help" in args and "--config-dir" in args:  # the user's options sit beside ablate's
        user = ROOT / command.cwd / args[args.index("--config-dir") + 1]
        for option in user.glob("*/*.yaml"):
            assert option.stem in result.stdout, option


def test_the_commands_are_found():
    """The collection above sees the commands the docs show (a change of format would hide them)."""
    texts = {c.text for c in COMMANDS}
    assert "make run" in texts and "make test" in texts
    assert "run -m model=plain,bn,residual seed=0,1,2" in texts
    assert any(c.text.startswith("run -m hydra/sweeper=tune") for c in CHECKED)
    assert len(CHECKED) >= 30 and len(REFUSED) >= 4


# --- make, report, tensorboard, torchrun, benchmarks ---------------------------------------------


def makefile_targets() -> dict[str, str]:
    """target -> its recipe."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if m := re.match(r"^([\w.-]+):", line):
            current = m.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line.strip() + "\n"
    return targets


MAKE = sorted({(c.argv[1], c.where) for c in COMMANDS if c.argv[0] == "make"})


@pytest.mark.parametrize(("target", "where"), MAKE, ids=[f"{w}:{t}" for t, w in MAKE])
def test_a_documented_make_target_exists(target, where):
    assert target in makefile_targets(), f"{where}: make {target}"


def test_make_run_is_the_documented_command():
    """The README: `make run` is `run -m experiment=quick`, `make tensorboard` opens outputs/."""
    targets = makefile_targets()
    assert "$(BIN)/run -m experiment=quick\n" in targets["run"]
    assert "$(BIN)/tensorboard --logdir outputs\n" in targets["tensorboard"]
    assert any(c.text == "run -m experiment=quick" for c in CHECKED)


OTHER = [c for c in COMMANDS if run_args(c) is None and c.argv[0] not in ("make", "cd")]


@pytest.mark.parametrize("command", OTHER, ids=ids(OTHER))
def test_a_documented_tool_command_is_run_or_exercised_elsewhere(command, started):
    argv = command.argv
    if exercised_elsewhere(command):
        return  # test_what_is_exercised_elsewhere_is
    tool = argv[1] if argv[0] == ".venv/bin/python" else argv[0]
    assert argv[0] != ".venv/bin/python" or tool.startswith("benchmarks/"), command.where
    assert ("help", tool) in started, f"{command.where}: {command.text}: run it here, or name the test that does"
    result = started[("help", tool)].result()
    assert result.returncode == 0, result.stderr
    for option in (a.split("=", 1)[0] for a in argv if a.startswith("--")):
        assert option in result.stdout, f"{command.where}: {tool} has no {option}"


def test_what_is_exercised_elsewhere_is():
    """Each entry names a command the docs show, and a file that holds the string that runs it;
    a `run` command with a placeholder is one of them."""
    shown = {c.text for c in COMMANDS}
    assert set(NOT_RUN) <= shown
    for c in COMMANDS:
        if run_args(c) is not None and placeholder(c):
            assert exercised_elsewhere(c), f"{c.where}: {c.text}: put in a real value, or name the test that runs it"
    for command, (path, needle) in EXERCISED_ELSEWHERE.items():
        assert command in shown, f"not in the docs any more: {command}"
        assert needle in (ROOT / path).read_text(), f"{path} lacks {needle!r} ({command})"


def test_every_documented_command_is_known():
    """A command the docs show is a run, make, report, tensorboard, torchrun, benchmark or cd;
    anything else needs a check here first."""
    for c in COMMANDS:
        assert c.argv[0] in KNOWN, f"{c.where}: {c.text}"
        if c.argv[0] == "cd":
            assert (ROOT / c.cwd / c.argv[1]).is_dir(), c.where
        if c.argv[0].startswith(".venv/bin/") and c.argv[0] not in (".venv/bin/pip", ".venv/bin/optuna-dashboard"):
            assert (Path(sys.executable).parent / Path(c.argv[0]).name).exists(), c.where  # this venv's


# --- Links and length ----------------------------------------------------------------------------


@cache
def anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    found = set()
    for line in without_fences(doc.read_text()).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


LINKS = [
    (doc, target)
    for doc in DOCS
    for target in re.findall(r"\]\(([^)\s]+)\)", without_fences(doc.read_text()))
    if not re.match(r"[a-z]+:", target)  # http:, https:, mailto:
]


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=[f"{d.name}->{t}" for d, t in LINKS])
def test_a_relative_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    assert file.exists(), f"{doc.name}: {target}"
    assert file.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{doc.name}: {target}: no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in DOCS[1:]:
        assert f"(docs/{page.name})" in readme, page.name


def test_the_readme_fits_on_a_screen_or_two():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_the_docs_name_no_private_notes():
    for doc in DOCS:
        text = doc.read_text()
        for word in ("DESIGN" + ".md", "../" + "shared"):
            assert word not in text, f"{doc.name} mentions {word}"
