#!/usr/bin/env bash
# The GPU check: step benchmarks at paper scale and the model equality tests on an accelerator.
#   bash benchmarks/gpu_check.sh OUT_DIR
# Needs the package importable (pip install -e '.[cuda12]'); writes one JSON per benchmark to OUT_DIR.
set -uo pipefail
out=${1:-bench_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
# Paper-scale decoders: MNIST-size (4 blocks, width 64, m=5) and FaceScrub (5 blocks, width 128, m=100).
python3 -m launch.benchmark --config=configs/mnist.py --json_out="$out/bench_mnist.json"
python3 -m launch.benchmark --config=configs/facescrub.py --json_out="$out/bench_facescrub.json"
# The CPU formulation of the transposed convolution, for comparison with cuDNN's.
python3 -m launch.benchmark --config=configs/mnist.py --config.decoder.impl=gemm \
  --json_out="$out/bench_mnist_gemm.json"
# LPA crafting throughput (vectors/s) on 1, 2, 4, ... of this machine's GPUs, with the scaling ratios.
python3 -m benchmarks.scaling --config=configs/mnist.py --json_out="$out/scaling_mnist.json"
python3 -m benchmarks.scaling --config=configs/facescrub.py --config.lpa.steps=24 \
  --json_out="$out/scaling_facescrub.json"
# GEMM and lax transposed convolutions agree on this platform too.
python3 -m pytest -q -p no:cacheprovider tests/test_models.py 2>&1 | tail -3
