"""What a person sees in TensorBoard, asked of a real `tensorboard` server started afresh on an
outputs/ folder that holds two sweeps, a run stopped with Ctrl-C and left so, and a run stopped
and resumed to completion: HPARAMS leads with the metrics and the keys that differ, SCALARS with
loss, accuracy and lr, CUSTOM SCALARS draws one tag per chart."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import run_cli, start_cli, wait_for_checkpoint_at_step

from runner.analysis.hparams import refresh

pytestmark = pytest.mark.slow  # six runs and a TensorBoard server: about 90 s

SMALL = ["data.train_size=300", "trainer.max_epochs=1", "model.channels=[8,16]", "model.hidden=[32]"]
STOPPABLE = ["trainer.max_epochs=2", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32", "data.train_size=1200",
             "trainer.checkpoint_every_minutes=0.0001", "trainer.log_every_n_steps=5"]  # fmt: skip
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """outputs/ as a user's: `run` started in a folder of its own, twice as a sweep, twice stopped."""
    cwd = tmp_path_factory.mktemp("project")
    for sweep in (
        ["-m", "experiment=quick", "model=plain,bn", "seed=0", *SMALL],
        ["-m", "model=plain", "optimizer.lr=0.01,0.1", *SMALL],
    ):
        result = run_cli(*sweep, cwd=cwd)
        assert result.returncode == 0, result.stderr
    for name in ("stopped", "resumed"):
        run_dir = cwd / "outputs" / "runs" / name
        process = start_cli(*STOPPABLE, f"hydra.run.dir={run_dir}", cwd=cwd)
        wait_for_checkpoint_at_step(run_dir, 10)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 130, output
    result = run_cli(*STOPPABLE, f"hydra.run.dir={cwd / 'outputs' / 'runs' / 'resumed'}", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "outputs"


@pytest.fixture(scope="module")
def tensorboard(outputs):
    """A real TensorBoard server on `outputs`, started after every run ended; its HTTP API."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(outputs), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ask(path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/{path}", data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    deadline = time.monotonic() + 60
    while True:
        try:
            if len(ask("data/runs")) == 6:  # every run loaded
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "TensorBoard did not load the 6 runs within 60 s"
        time.sleep(0.5)
    time.sleep(2)  # one more reload pass: every run's files read
    yield ask
    server.terminate()
    server.wait(timeout=30)


def session_groups(ask) -> dict:
    """HPARAMS' table: trial ID -> (its session's status, {column: value}, {metric: value})."""
    experiment = ask("data/plugin/hparams/experiment", {"experimentName": ""})
    shown = {h["name"]: h["displayName"] for h in experiment["hparamInfos"]}
    groups = ask(
        "data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": STATUSES, "colParams": [], "startIndex": 0, "sliceSize": 100},
    )["sessionGroups"]
    return {
        g["name"]: (
            g["sessions"][0]["status"],
            {shown[k]: v for k, v in g["hparams"].items()},
            {m["name"]["tag"]: m["value"] for m in g["metricValues"]},
        )
        for g in groups
    }


def test_hparams_leads_with_the_metrics_and_the_keys_that_differ(tensorboard, outputs):
    assert refresh(outputs) == 0  # in another process, nothing changed: no record is rewritten
    experiment = tensorboard("data/plugin/hparams/experiment", {"experimentName": ""})
    assert [m["displayName"] for m in experiment["metricInfos"]] == [
        "test acc", "test loss", "best val acc", "final val loss", "final train loss",
    ]  # fmt: skip
    columns = {h["displayName"]: h for h in experiment["hparamInfos"]}
    names = list(columns)
    assert len(names) == len(set(names)) and "max_epochs" not in names  # no duplicate columns
    differing = [n for n in names if columns[n]["differs"]]
    # TensorBoard ticks the first five that differ: the choices that differ, then the keys a choice
    # does not explain, the status, and last the keys that only follow a choice
    assert differing[:5] == ["experiment", "model", "data.batch_size", "data.train_size", "optimizer.lr"]
    assert differing.index("trainer.max_epochs") < differing.index("status") < differing.index("model.batch_norm")
    assert columns["seed"]["type"] == "DATA_TYPE_STRING"  # an integer reads as one, not 0.0000
    assert columns["optimizer.lr"]["type"] == "DATA_TYPE_FLOAT64"
    assert not columns["activation"]["differs"] and "activation" in names  # the choices are always there

    table = session_groups(tensorboard)
    assert len(table) == 6
    trials = sorted(table)
    quick = [t for t in trials if table[t][1]["experiment"] == "quick"]
    lr_sweep = [t for t in trials if table[t][1]["experiment"] == "null" and table[t][1]["optimizer.lr"] in (0.01, 0.1)]
    assert len(quick) == 2 and len(lr_sweep) == 2
    # trial IDs tell the sweeps apart within TensorBoard's first 10 characters (its column is 10em wide)
    assert not {t[:10] for t in quick} & {t[:10] for t in lr_sweep}
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d(-\d+)? #\d", t) for t in quick + lr_sweep)
    for trial in quick:
        status, hparams, metrics = table[trial]
        assert status == "STATUS_SUCCESS" and hparams["status"] == "completed"
        assert hparams["optimizer.lr"] == 0.05  # the default, shown as its value, not left blank
        assert hparams["seed"] == "0" and hparams["trainer.max_epochs"] == "1"
        assert set(metrics) == {"acc/test", "loss/test", "acc/best_val", "loss/val", "loss/train"}
        assert 0 < metrics["acc/test"] <= 1
    stopped = next(t for t in trials if table[t][1]["status"] == "interrupted")
    assert table[stopped][0] == "STATUS_UNKNOWN" and "acc/test" not in table[stopped][2]
    resumed = [t for t in trials if t not in quick + lr_sweep + [stopped]]
    assert len(resumed) == 1
    status, hparams, metrics = table[resumed[0]]
    assert status == "STATUS_SUCCESS" and hparams["status"] == "completed" and 0 < metrics["acc/test"] <= 1


def test_scalars_lead_with_loss_accuracy_and_lr_and_custom_scalars_draw_one_tag_a_chart(tensorboard):
    tags = set().union(*tensorboard("data/plugin/scalars/tags").values())  # of every run
    groups = sorted({tag.split("/")[0] for tag in tags})  # TensorBoard groups charts by prefix, in name order
    assert groups == ["acc", "loss", "lr", "probe"]
    assert {"probe/grad_norm/first_to_last", "probe/dead_units/features.0.1"} <= tags

    layout = tensorboard("data/plugin/custom_scalars/layout")
    charts = {c["title"]: [chart["title"] for chart in c["chart"]] for c in layout["category"]}
    assert charts["loss, accuracy and learning rate"] == [
        "train loss",
        "val loss",
        "train accuracy",
        "val accuracy",
        "learning rate",
    ]
    assert charts["vanishing gradients"] == ["first layer / last layer gradient norm"]
    dead = next(v for k, v in charts.items() if k.startswith("dead units"))
    assert sorted(dead) == sorted(
        t.removeprefix("probe/dead_units/") for t in tags if "dead_units" in t
    )  # one chart a layer
    for category in layout["category"]:
        for chart in category["chart"]:
            (tag,) = chart["multiline"]["tag"]  # one tag per chart: each run one line in its own colour
            assert any(re.fullmatch(tag, t) for t in tags), tag
