#!/usr/bin/env bash
# Wheels for the lent GPU machines, which install nothing from a registry (docs/libraries.md): each set
# goes into a git-ignored folder for the device tool's carry list. Run on this project's CPU machine.
#   test-tools  pytest-xdist and execnet in .carry/test-tools (scripts/gpu_correctness.sh installs them
#               where xdist does not import, for crash isolation)
#   libs        xformers and sageattention in .whl (scripts/gpu_approximate.sh installs them)
#   fa4         FlashAttention 4 with its CUDA 13 dependencies in .carry/fa4, packed into parts of at
#               most 40 MiB in .carry/fa4-parts (one part per call of one machine; scripts/carry_wheels.py)
# Only wheels for the GPU machines' CPython 3.12 on x86-64, without dependencies: torch is theirs.
set -euo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
get() {  # get FOLDER REQUIREMENT...
  local dir=$1
  shift
  mkdir -p "$dir"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 -d "$dir" "$@"
}
case "${1:?test-tools, libs or fa4}" in
  test-tools) get .carry/test-tools "pytest-xdist==3.8.0" "execnet==2.1.2" ;;
  libs) get .whl "xformers==0.0.35" "sageattention==1.0.6" ;;
  fa4)
    # flash-attn-4's requirements, walked by hand: nvidia-cutlass-dsl with its base, core and cu13
    # libraries (the meta package asks for cu12 by default), and what those require
    get .carry/fa4 "flash-attn-4==4.0.0b36" "nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" \
      "nvidia-cutlass-dsl-libs-core==4.8.1" "nvidia-cutlass-dsl-libs-cu13==4.8.1" "quack-kernels==0.6.5" \
      "apache-tvm-ffi==0.1.15.post2" "torch-c-dlpack-ext==0.1.5" "cuda-bindings==13.5.0" "cuda-pathfinder==1.9.1" \
      "protobuf==7.36.2" "einops==0.8.2"
    rm -rf .carry/fa4-parts
    "$PY" scripts/carry_wheels.py pack .carry/fa4 .carry/fa4-parts --max-mib 40 ;;
  *) echo "carry_download.sh: unknown set '$1' (test-tools, libs or fa4)" >&2; exit 2 ;;
esac
