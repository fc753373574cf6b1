#!/usr/bin/env bash
# The checks of trainer.graphs and of sweeps that share a GPU, in one go, on a machine with an
# NVIDIA GPU (time on one is short): the GPU tests, make bench's Fashion-MNIST bn case at batch 128
# with and without the captured step, experiment=fmnist_speed's wall time to accuracy, and
# experiment=quick on Fashion-MNIST as jobs per minute with 1, 2, 4 and 8 jobs on the GPU.
#
#   benchmarks/gpu_check.sh [DATA_ROOT]
#   PARTS="tests bench" benchmarks/gpu_check.sh [DATA_ROOT]   # some of: tests bench speed sweeps
#
# Needs, for the python3 that has CUDA torch ($PYTHON to name another): ablate's packages
# (hydra-core, omegaconf, tensorboard, rich, mlxtend, hydra-joblib-launcher, safetensors), and
# Fashion-MNIST's four .gz files in DATA_ROOT/FashionMNIST/raw/ (default .data; Debian's
# dataset-fashion-mnist has them in /usr/share/datasets/fashion-mnist). About 10 minutes on an H100:
# where one command may run less long, run the parts in two (PARTS="tests bench speed", then
# PARTS=sweeps).
set -uo pipefail
export PYTHONUNBUFFERED=1 ABLATE_DATA="${1:-.data}"
py="${PYTHON:-python3}"
parts=" ${PARTS:-tests bench speed sweeps} "
step() { printf '\n== %s\n' "$*"; }
part() { [[ "$parts" == *" $1 "* ]]; }

step "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

if part tests; then
step "tests that need a GPU: the captured step computes the eager steps' bits, and resumes bitwise"
timeout 300 "$py" -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_compute.py
fi

if part bench; then
step "make bench, CUDA, batch 128, Fashion-MNIST-shaped bn: trainer.graphs=auto, then false"
timeout 300 "$py" benchmarks/throughput.py --models bn --shapes fashion --rounds 5
timeout 300 "$py" benchmarks/throughput.py --models bn --shapes fashion --rounds 5 --graphs false
fi

if part speed; then
step "experiment=fmnist_speed: wall time to accuracy, start-up included, seeds 0 1 2"
timeout 300 "$py" benchmarks/time_to_accuracy.py
fi

if part sweeps; then
step "experiment=quick on Fashion-MNIST: jobs per minute, sequential, then 1, 2, 4 and 8 jobs at once"
timeout 900 "$py" benchmarks/sweep_launchers.py --jobs 1 2 4 8 experiment=quick data=fashion_mnist
fi
