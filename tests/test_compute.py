"""Precision, layout, threads and compilation: chosen per machine under `auto`, forced by
`trainer.*`, recorded in metrics.json, and the same model computes the same function in each."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_cfg, run_cli

from runner.engine import builders, device, run


def cpu_flags() -> set[str]:
    """The CPU's feature flags, as Linux lists them in /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    return {
        flag
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }


def test_auto_picks_bf16_exactly_where_the_cpu_has_native_bf16_and_channels_last_on_any_cpu():
    native = bool({"avx512_bf16", "amx_bf16", "amx_tile"} & cpu_flags())  # read here, not by the code under test
    gpu = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else None
    compute = device.pick(compose_cfg().trainer)
    assert compute.device.type == (gpu or "cpu")  # auto takes cuda, then mps, then cpu
    assert device.native_bf16(torch.device("cpu")) == native
    if gpu is None:
        assert (compute.precision, compute.layout) == ("bf16" if native else "fp32", "channels_last")
        assert (compute.autocast_dtype is torch.bfloat16) == native


def test_auto_keeps_fp32_with_channels_last_on_cuda_where_cudnn_convolves_in_tf32():
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert (device.pick_precision("auto", cuda), device.pick_layout("auto", cuda)) == ("fp32", "channels_last")


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_chooses_cudnns_repeatable_convolutions_over_its_autotuned_ones(deterministic):
    run.seed_everything(0, deterministic)
    assert torch.backends.cudnn.deterministic is deterministic
    assert torch.backends.cudnn.benchmark is not deterministic
    run.seed_everything(0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_each_precision_and_layout_can_be_forced(precision, layout):
    compute = device.pick(compose_cfg(f"trainer.precision={precision}", f"trainer.layout={layout}").trainer)
    assert (compute.precision, compute.layout) == (precision, layout)
    assert compute.memory_format == (torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def test_parallel_jobs_of_a_sweep_spread_over_the_gpus_and_share_them_beyond():
    assert [device.gpu_for_job(j, 4) for j in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert {device.gpu_for_job(j, 1) for j in range(8)} == {0}  # 8 jobs on one GPU
    assert device.gpu_for_job(5, 0) == 0
    compute = device.pick(compose_cfg().trainer, parallel_jobs=4, job=3)
    gpus = torch.cuda.device_count()
    assert compute.device == (torch.device("cuda", 3 % gpus) if gpus else device.pick(compose_cfg().trainer).device)


def test_threads_share_the_cores_among_parallel_jobs():
    cores = len(os.sched_getaffinity(0))
    assert device.pick_threads("auto", 1) == cores
    assert device.pick_threads("auto", cores) == 1
    assert device.pick_threads("auto", 4 * cores) == 1  # never below one
    assert device.pick_threads(3, 2) == 3  # a number is taken as it is


@pytest.mark.parametrize("name", ["plain", "bn", "residual"])
def test_channels_last_and_bf16_compute_the_same_function(name):
    torch.manual_seed(0)
    cfg = compose_cfg(f"model={name}")
    model = builders.build_model(cfg.model, cfg.activation, (3, 32, 32), 10).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        reference = model(x)
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bf16, reference, rtol=0.1, atol=0.1)  # bf16 keeps 8 bits of mantissa


def test_a_channels_last_run_trains_and_records_how_it_computed(tmp_path, quick):
    run_dir = tmp_path / "run"
    result = run_cli(
        *quick,
        "trainer.layout=channels_last",
        "trainer.threads=1",
        "trainer.precision=fp32",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["layout"], metrics["threads"], metrics["precision"]) == ("channels_last", 1, "fp32")
    assert metrics["test_acc"] > 0.5


@pytest.mark.slow
def test_a_compiled_run_trains_and_matches_the_eager_run_closely(tmp_path, quick):
    runs = {}
    for compile_ in ("false", "true"):
        run_dir = tmp_path / compile_
        result = run_cli(*quick, f"trainer.compile={compile_}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr
        runs[compile_] = json.loads((run_dir / "metrics.json").read_text())
    assert runs["true"]["test_acc"] > 0.5
    # fused kernels round differently, so after one epoch the two agree closely but not bitwise
    assert abs(runs["true"]["history"][0]["train_loss"] - runs["false"]["history"][0]["train_loss"]) < 0.05


ALLOCATOR_SCRIPT = """
import resource, sys, torch
from runner.engine import allocator
from models import ResidualNet
set_here = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = ResidualNet(in_shape=(1, 28, 28), num_classes=10, activation=torch.nn.ReLU, channels=[16, 32], blocks=1, hidden=[32])
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(set_here, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.slow  # three processes of their own
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="glibc's malloc on Linux")
def test_the_allocator_keeps_freed_memory_so_a_step_faults_few_new_pages_unless_the_user_tuned_malloc():
    def run_script(how: str, env: dict) -> tuple[str, float]:
        command = [sys.executable, "-c", ALLOCATOR_SCRIPT, how]
        out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
        return out.split()[0], float(out.split()[1])

    set_here, kept = run_script("keep", {})
    _, default = run_script("default", {})
    assert set_here == "True" and kept < default / 5, (kept, default)  # each step reuses the last one's pages
    tuned, _ = run_script("keep", {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"})
    assert tuned == "False"  # the user's own setting stands
