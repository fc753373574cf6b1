"""`${data:...}`: the data's facts in a part's YAML, known before anything runs (runner.data.facts):
from the built-in table without reading a file, from a scan of an image folder, or from the data
loaded once (and not decoded again for the run); refusals in one line before anything is written;
a user's model YAML with `num_classes: ${data:num_classes}` in a project of their own."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import compose_cfg, write_image_folder
from helpers import ROOT, run_cli
from omegaconf import OmegaConf
from safetensors.torch import load_file

from runner.config import schema
from runner.config.rules import ConfigError
from runner.data import datasets, facts, splits, torchvision_sets
from runner.data.datasets import FACTS

COUNTED_NET = '''
import math

from torch import nn


class CountedNet(nn.Module):
    """A model copied from elsewhere, with its own names for the data's sizes: flatten, a hidden
    layer, the classes."""

    def __init__(self, num_classes: int, in_chans: int, input_size: int, size: list, hidden: int = 16):
        super().__init__()
        assert size[0] == in_chans and math.prod(size) == input_size, (size, in_chans, input_size)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
'''

COUNTED_YAML = """\
_target_: facts_net.CountedNet
num_classes: ${data:num_classes}
in_chans: ${data:channels}
input_size: ${data:flat_size}  # C x H x W
size: ${data:in_shape}
hidden: 16
"""


def with_values(cfg, values: dict):
    """`cfg` with `values` ({group: {key: value}}) merged in, keys new to a group too."""
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, values)


def resolved(cfg, *names: str) -> list:
    """The facts `names` as a part's YAML in `cfg` would get them."""
    probe = with_values(cfg, {"model": {name: f"${{data:{name}}}" for name in names}})
    return [OmegaConf.to_container(probe.model, resolve=True)[name] for name in names]


ALL = ("num_classes", "channels", "height", "width", "flat_size", "in_shape")


@pytest.mark.parametrize("name", sorted(FACTS))
def test_the_built_in_data_sets_facts_need_no_file(monkeypatch, name):
    def read(*args, **kwargs):
        raise AssertionError("a data file read for the facts")

    for reader in ("read_mnist_5k", "read_files", "find_folder"):
        monkeypatch.setattr(datasets, reader, read)
    (channels, height, width), classes = FACTS[name]
    cfg = compose_cfg(f"data={name}")
    flat, shape = channels * height * width, [channels, height, width]
    assert resolved(cfg, *ALL) == [classes, channels, height, width, flat, shape]


def test_the_table_agrees_with_the_data_mnist_5k_loads():
    data = splits.load(compose_cfg("data=mnist_5k").data, torch.device("cpu"))
    (channels, height, width), classes = FACTS["mnist_5k"]
    assert (data.num_classes, data.in_shape) == (classes, (channels, height, width))


def test_each_config_gets_its_own_facts_in_one_process(tmp_path):
    """No resolver cache across configs: a sweep composes many."""
    write_image_folder(tmp_path / "pets", classes=3, per_class_train=2, per_class_test=1, size=(12, 10), mode="L")
    folder = compose_cfg("data=image_folder", f"data.root={tmp_path / 'pets'}", "data.image_size=[8,6]")
    for cfg, expected in ((compose_cfg(), [10, 784]), (folder, [3, 48]), (compose_cfg("data=cifar10"), [10, 3072])):
        assert resolved(cfg, "num_classes", "flat_size") == expected


def test_a_data_set_loaded_for_its_facts_is_not_decoded_again_for_the_run(monkeypatch):
    cfg = compose_cfg("data=torchvision", "data._target_=torchvision.datasets.FakeData", "+data.size=30",
                      "+data.image_size=[3,8,6]", "data.batch_size=4")  # fmt: skip
    decoded = []
    decode = torchvision_sets.decode
    monkeypatch.setattr(torchvision_sets, "decode", lambda *args: decoded.append(1) or decode(*args))
    assert resolved(cfg, "num_classes", "in_shape") == [10, [3, 8, 6]] and len(decoded) == 1
    data = splits.load(cfg.data, torch.device("cpu"))
    assert len(decoded) == 1 and data.in_shape == (3, 8, 6) and data.num_classes == 10
    again = splits.load(cfg.data, torch.device("cpu"))  # a sweep's next job in this process: the splits kept
    assert again is data and len(decoded) == 1
    other = with_values(cfg, {"data": {"val_fraction": 0.5}})
    assert len(splits.load(other.data, torch.device("cpu")).val.labels) > len(
        data.val.labels
    )  # another split: read again
    assert len(decoded) == 2


def test_an_unknown_name_or_missing_data_is_refused_in_one_line(tmp_path):
    cfg = with_values(compose_cfg(), {"model": {"num_classes": "${data:colour}"}})
    with pytest.raises(ConfigError) as e:
        schema.validate(cfg)
    assert str(e.value) == (
        "${data:colour} is not known; allowed: ${data:num_classes}, ${data:channels}, ${data:height}, "
        "${data:width}, ${data:flat_size}, ${data:in_shape}"
    )
    missing = compose_cfg("data=image_folder", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError) as e:
        schema.validate(with_values(missing, {"model": {"num_classes": "${data:num_classes}"}}))
    assert str(e.value).startswith(f"data.root={tmp_path / 'nowhere'}: no such folder; allowed: ")
    inside = with_values(compose_cfg(), {"data": {"test_fraction": "${data:num_classes}"}})
    with pytest.raises(ConfigError) as e:
        schema.validate(inside)
    assert str(e.value) == (
        "${data:num_classes} is not allowed in the data config; allowed: ${data:...} in the other groups (model, ...)"
    )


@pytest.fixture
def project(tmp_path) -> Path:
    """examples/own_parts as a user has it, with a model whose YAML takes the data's facts."""
    folder = tmp_path / "my_project"
    shutil.copytree(ROOT / "examples" / "own_parts", folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (folder / "facts_net.py").write_text(COUNTED_NET)
    (folder / "configs" / "model" / "counted.yaml").write_text(COUNTED_YAML)
    return folder


def run_user(project: Path, *args: str, options: tuple = ()) -> subprocess.CompletedProcess:
    """`run --config-dir configs [options] model=counted *args` in the user's project."""
    return run_cli("--config-dir", "configs", *options, "model=counted", *args, cwd=project)


def test_a_users_model_yaml_takes_the_facts_of_mnist_5k_and_of_an_image_folder(project, tmp_path):
    result = run_user(project, options=("--cfg", "job", "--resolve"))
    assert result.returncode == 0, result.stderr
    model = yaml.safe_load(result.stdout)["model"]
    assert (model["num_classes"], model["in_chans"], model["input_size"], model["size"]) == (10, 1, 784, [1, 28, 28])

    pets = tmp_path / "pets"
    write_image_folder(pets, classes=3, per_class_train=12, per_class_test=4, size=(16, 16))
    folder = ["data=image_folder", f"data.root={pets}"]
    result = run_user(project, *folder, options=("--cfg", "job", "--resolve"))
    assert result.returncode == 0, result.stderr
    model = yaml.safe_load(result.stdout)["model"]
    assert (model["num_classes"], model["in_chans"], model["input_size"], model["size"]) == (3, 3, 768, [3, 16, 16])
    assert not (project / "outputs").exists()

    run_dir = tmp_path / "run"
    result = run_user(project, *folder, "data.batch_size=8", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (metrics["data"]["num_classes"], metrics["data"]["in_shape"]) == (3, [3, 16, 16])
    weights = load_file(run_dir / "model.safetensors")
    assert weights["net.1.weight"].shape == (16, 768) and weights["net.3.weight"].shape == (3, 16)
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]["model"]
    assert (saved["num_classes"], saved["in_chans"], saved["input_size"], saved["size"]) == (3, 3, 768, [3, 16, 16])
    written = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["model"]
    assert written["num_classes"] == "${data:num_classes}"  # the config as composed: the facts come with the data


@pytest.mark.parametrize(
    "args, line",
    [
        (["model.num_classes=${data:colour}"],
         ("${data:colour} is not known; allowed: ${data:num_classes}, ${data:channels}, ${data:height}, "
          "${data:width}, ${data:flat_size}, ${data:in_shape}")),
        (["data=image_folder", "data.root=nowhere"], "data.root=nowhere: no such folder; allowed: "),
    ],
)  # fmt: skip
def test_a_refusal_of_the_facts_comes_before_anything_is_written(project, tmp_path, args, line):
    for options in ((), ("--cfg", "job", "--resolve")):
        result = run_user(project, *args, f"hydra.run.dir={tmp_path / 'run'}", options=options)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"error: {line}")
        assert not (tmp_path / "run").exists() and not (project / "outputs").exists()


def test_facts_module_names_match_the_docs():
    text = (ROOT / "docs" / "config-reference.md").read_text()
    assert all(f"${{data:{name}}}" in text for name in facts.NAMES)
    assert np.prod(facts.Facts(10, 3, 4, 5).in_shape) == facts.Facts(10, 3, 4, 5).flat_size
