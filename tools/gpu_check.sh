#!/usr/bin/env bash
# The GPU check: every CUDA test, then the GPU branches of the benchmark sections, in one go
# (about 8 minutes on one H100). Run from the repository root on a machine with a GPU:
#
#   tools/gpu_check.sh [OUT_DIR]        # logs and benchmark tables in OUT_DIR (default gpu_check/)
#
# It installs this package beside the tree (/tmp/reid_site) and, where torchreid or yacs are
# missing, the wheels in .whl/ (git-ignored; gdown, which torchreid imports, needs the last two):
#
#   pip wheel --no-deps torchreid==0.2.5 yacs gdown beautifulsoup4 soupsieve -w .whl
#
# Where a clone of the official DG-Net code lies in .official/DG-Net (git-ignored; its Python
# files and configs/ are enough), the DG-Net iteration is also timed beside the official one
# on the GPU (tools/check_official.py --time, batch 8 + 8 at 256x128, about a minute).
#
# Exit status: the tests'.
set -uo pipefail
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)
# torchreid and its imports from the wheels where missing; reid-plugins itself always, for the
# entry points through which the projects register (the code still runs from this tree)
site=/tmp/reid_site
wheels=()
"$python" -c 'import torchreid, yacs' 2>/dev/null || wheels=(.whl/*.whl)
"$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target "$site" "${wheels[@]}" . || exit
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
GPU_CHECK_OUT="$out" timeout 280 "$python" -m pytest -m cuda tests -q -rs --durations=10 -p no:cacheprovider 2>&1 \
    | tee "$out/cuda_tests.log"
status=${PIPESTATUS[0]}
if [ -d .official/DG-Net ]; then
    timeout 100 "$python" tools/check_official.py --method dgnet --official-dir .official/DG-Net \
        --time --batch 8 --rounds 3 --out "$out/dgnet_official.md" 2>&1 | tee "$out/dgnet_official.log"
fi
timeout 170 "$python" tools/benchmark.py --sections dgnet engine rga apinet scal models --quick \
    --epochs 1 --configs configs/baselines/resnet50_synthreid.yaml \
    --out-dir "$out/bench" 2>&1 | tee "$out/benchmark.log"
exit "$status"
