#!/usr/bin/env bash
# Issue 14's GPU measurements in one device call of at most 9 minutes, on the borrowed GPU machine (Python
# 3.12 with JAX and PyTorch, no TensorFlow, no registry). Prepare here, then call the device tool:
#   bash benchmarks/device_wheels.sh                   # .whl/: Keras, keras-hub, namex, optree, MONAI
#   run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=570)
# Writes to $OUT (what comes back; at most 8 files): device.txt, the two GPU-training tables (the studies'
# four families and NoduleHyperFusionNet, then Inf-Net and the zoo; each keeps every measurement it finished
# if its time limit cuts it off), their log, and lungnet (Keras on JAX) against MONAI (PyTorch), both mixed
# float16, with its log.
# BENCH_ARGS is passed to gpu_training.py: BENCH_ARGS=--quick makes a CPU dry run of the whole call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lungnet-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "device_run.sh: the wheels did not install; run benchmarks/device_wheels.sh here and carry .whl" >&2; exit 1; }
# JAX must not take most of the GPU's memory up front: the MONAI comparison runs PyTorch in the same process
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  python3 -c "import jax, keras, torch; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'torch', torch.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
timeout 250 python3 benchmarks/gpu_training.py ${BENCH_ARGS:-} --families custom_cnn efficientnet_b2 unet nodule_hyperfusion \
  attention_res_unet --out "$OUT/gpu_training_jax_studies.json" 2>&1 | tee "$OUT/gpu_training.log"
timeout 190 python3 benchmarks/gpu_training.py ${BENCH_ARGS:-} --families inf_net unar res34_unet_v2 unet_plus_plus deeplab_v3_plus \
  segformer light_unet --out "$OUT/gpu_training_jax_zoo.json" 2>&1 | tee -a "$OUT/gpu_training.log"
timeout 60 python3 benchmarks/monai_comparison.py --mixed --output "$OUT/monai_comparison_jax_gpu_mixed.json" 2>&1 \
  | tee "$OUT/monai.log"
ls -la "$OUT"
