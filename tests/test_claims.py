"""benchmarks/claims.py: every measured table of the docs sits in a block the script writes, and a
block written from real runs holds their table and what made them (commit, machine, date, command)."""

import importlib.util
import re
from pathlib import Path

from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent


def load_claims():
    spec = importlib.util.spec_from_file_location("claims", ROOT / "benchmarks" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_of_the_script_has_one_block_in_its_page_and_every_block_a_table():
    claims = load_claims()
    found = {}
    for page in ("claims.md", "speed.md"):
        text = (ROOT / "docs" / page).read_text()
        for name in re.findall(r"<!-- claims\.py (\S+) -->", text):
            found[name] = found.get(name, []) + [page]
        assert text.count("<!-- /claims.py -->") == len(re.findall(r"<!-- claims\.py \S+ -->", text)), page
    assert found == {name: [t.page] for name, t in claims.TABLES.items()}


def test_a_block_is_written_from_a_sweeps_runs_with_their_provenance_and_nothing_else_changes(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = ["data.train_size=200", "trainer.max_epochs=1", "model.channels=[4,8]", "model.hidden=[16]"]
    result = run_cli("-m", "activation=tanh,sigmoid", "seed=0,1", *tiny, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    claims = load_claims()
    table = claims.Table("activations", "claims.md", [["-m", "activation=tanh,sigmoid"]], "sweep", ["params"],
                         probe=claims.GRAD_RATIO)  # fmt: skip
    text = claims.measure(table, [sweep])
    made, _, body = text.partition(":\n\n")
    commit = claims.provenance.code()[0]["commit"][:7]
    assert made.startswith(f"Measured at commit {commit}") and " cores, " in made
    assert re.search(r"4 runs, \d+ s of training, by `run -m activation=tanh,sigmoid seed=0,1 ", made), made
    header, rows = claims.markdown_tables(body)[0]
    assert header == ["variant", "n", "test acc", "Δ to best", "params", f"`{claims.GRAD_RATIO}`"]
    ratios = {row[0].strip("*"): row[-1] for row in rows}
    assert set(ratios) == {"activation=tanh", "activation=sigmoid"} and all(r != "-" for r in ratios.values())
    sigmoid = max(float(v) for v in ratios["activation=sigmoid"].split(" to "))
    tanh = min(float(v) for v in ratios["activation=tanh"].split(" to "))
    assert sigmoid < tanh  # read back from the runs' TensorBoard events: sigmoid's gradient vanishes

    docs = tmp_path / "docs"
    docs.mkdir()
    before, after = "# Claims\n\nProse before.\n\n", "\nProse after.\n"
    (docs / "claims.md").write_text(before + "<!-- claims.py activations -->\nold\n<!-- /claims.py -->\n" + after)
    claims.write_block(table, text, docs)
    page = (docs / "claims.md").read_text()
    assert page == before + f"<!-- claims.py activations -->\n{text}\n<!-- /claims.py -->\n" + after
