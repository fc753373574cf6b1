"""Safe loading: a checkpoint is unpickled with torch's weights-only unpickler, so one that carries
code is refused with one line naming the file, nothing in it runs, and the file stays in place.
Final weights are exported as model.safetensors (tensors only)."""

import os

import pytest
import torch
from fixtures import compose_cfg
from helpers import run_cli
from omegaconf import OmegaConf
from safetensors.torch import load_file

from runner.engine import checkpoint


class Payload:
    """Unpickling it runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path, quick):
    run_dir, marker = tmp_path / "run", tmp_path / "code-ran"
    last = run_dir / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"model": Payload(marker), "config": {}, "step": 0}, last)
    planted = last.read_bytes()

    result = run_cli(*quick, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {last} was refused: it holds pickled code or objects other than tensors (posix.system), "
        "which were not run; allowed: a checkpoint written by ablate; move the file away to start this run afresh"
    )
    assert last.read_bytes() == planted and not (run_dir / "metrics.json").exists()

    torch.load(last, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_a_damaged_checkpoint_gets_one_line_naming_the_file(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"step": 1}, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"^{path} is not a readable checkpoint \(.*\); .*move the file away"):
        checkpoint.load(path)


def test_exported_weights_load_back_equal_also_from_a_channels_last_model(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(288, 4)
    )
    model = model.to(memory_format=torch.channels_last)  # NHWC weights are not contiguous
    path = tmp_path / "model.safetensors"
    checkpoint.export_weights(path, model)
    weights = load_file(path)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_each_key_added_since_resumes_under_the_default_the_config_gives_it():
    """checkpoint.ADDED_KEYS: a checkpoint without the key matches the config's default for it."""
    config = OmegaConf.to_container(compose_cfg("model=plain"), resolve=True)
    for key, before in checkpoint.ADDED_KEYS.items():
        group, name = key.split(".")
        older = {**config, group: {k: v for k, v in config[group].items() if k != name}}
        assert checkpoint.first_difference(older, config) is None, key
        other = {**config, group: {**config[group], name: "another"}}
        assert checkpoint.first_difference(older, other) == (key, before[0], "another")
