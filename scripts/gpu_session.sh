#!/usr/bin/env bash
# One device-tool call's worth of GPU work on a 2-GPU host (nvidia-h200-x2), as planned for a
# 30-minute session: three calls, each under 10 minutes, each packing its logs and JSON into
# one archive under $OUT (the tool returns at most 8 files).
#   tier2     the full tier spread over both GPUs (--attn-gpus 2), then the device-time and GPU
#             isolation tests on GPU 0 beside scripts/gpu_checks.sh on GPU 1
#   tier1a    the full tier on GPU 0 alone, journaled to /tmp/attnsuite-tier1.journal, stopped by
#   tier1b    SIGINT before the call's limit; tier1b (the next call, same warm machine) resumes it.
#             The single-GPU wall time is the two parts' loop times added (each part's log says it).
#             GPUS=2 spreads the journaled run over both GPUs instead: a fresh-instance A/A run against
#             the shipped baseline whose confirmation pass would not fit in one call. JOURNAL=path
#             (default /tmp/attnsuite-tier1.journal) keeps a second journaled run apart from the first
#             on the same machine (e.g. a warm-cache run after a cold one).
#   tier1     the full tier on GPU 0 alone, beside scripts/gpu_triton.sh on GPU 1 (the Triton run
#             shares the host's CPUs with the tier: its wall time is read with that in mind)
#   dist      scripts/gpu_distributed.sh: NCCL correctness in bf16/fp16 and the context-parallel timings,
#             then scripts/devtime_probe.py (graph against event time under load and after idle)
#   approx    scripts/gpu_approximate.sh on GPU 1 (libraries, with what the calls stashed)
#   cpbench   the context-parallel workload through pytest and the gate (its distributed cases on
#             P = 2 ranks, one per GPU, beside the single-GPU backends), journaled to /tmp/cp.journal;
#             CP_S (default 540) stops it, and CP_RESUME=1 in the next call carries it on
#   isolation the correctness tests under pytest-xdist on a CUDA GPU: first the hostile variants
#             (a segfault, a device-side assert, a hang) beside sdpa-flash, each of which must cost only
#             its own tests, then the GPU workflow's correctness step as it runs it (test_correctness and
#             tests, both passes; CORRECTNESS_PATHS narrows it) (HOSTILE_S, CORRECTNESS_S limit each)
#   abeval    scripts/ab_eval.py: AB_AA (default 5) A/A runs of `attnsuite ab --base HEAD` on unchanged code, then
#             AB_VARIANT (default sdpa-flash) slowed 5% and 10% in the head rounds, over the full tier's
#             AB_SELECT (default --attn-workload fa-sweep) for that variant; kept in AB_DIR (default /tmp/attnsuite-abeval), so
#             the next call on the same machine resumes it (AB_S limit, default 540; a run the longest
#             run so far says would end past it is not started, since a cut run is lost)
#   devprobe  scripts/devtime_probe.py --cases PROBE_CASES (default decode: the 134 MB KV-cache decode
#             steps by graph, kernel-sum and kernel-sum with a cold L2; run it on several fresh machines
#             to see which measure agrees across them) (PROBE_S limit, default 300), then
#             scripts/deadrow_probe.py (which SDPA backend gets fully masked rows' gradients wrong;
#             DEADROW_S limit, default 150)
#   mla       scripts/mla_tune.py (the absorbed-MLA kernel over tile configs at DeepSeek-V3 size; MLA_TUNE_S,
#             default 300, stops starting configs; MLA_TUNE_ARGS adds options, e.g. --kernel-file), then
#             scripts/triton_bench.py --stages mla (the whole layer's forward beside mla-expanded and
#             mla-absorbed; MLA_BENCH_S), then the MLA correctness tests on CUDA (MLA_TESTS_S, default 150)
#   cigate    the GPU workflow's push step as the workflow runs it (bash scripts/ci_bench.sh full enforce
#             --attn-require-baseline), its OUT kept in CIGATE_DIR (default /tmp/attnsuite-cigate) so that
#             the next call on the same machine carries it on with CIGATE_RESUME=1 (--attn-resume); CIGATE_S
#             (default 540) stops it with SIGINT, as a cancelled CI job would be
#   cibench   any scripts/ci_bench.sh run, CIBENCH_ARGS its arguments (e.g. "full enforce --attn-workload=decode"),
#             OUT kept in CIBENCH_DIR (default /tmp/attnsuite-cibench), packed like every call here: run straight
#             from the device tool, such a run's 13 files had overflowed the 8 the tool returns (s26 lost a JSON)
#             (CIBENCH_S limit, default 540, SIGINT as a cancelled job)
#   hosttests the README's test command (scripts/test.sh, with the image's python and no set-up) on a
#             host with a GPU, where CI never runs it: what a user's GPU workstation sees (HOST_S limit,
#             default 540; WORKERS, default 8; HOST_ARGS, e.g. "-k distributed", narrows it)
# Compilation caches as the GPU workflow keeps them on its runner: TRITON_CACHE_DIR,
# TORCHINDUCTOR_CACHE_DIR and the driver's CUDA_CACHE_PATH under /tmp/attnsuite-cache,
# TRITON_CACHE_AUTOTUNING=1 (a caller's own settings win). PACK_CACHE=1 packs them at the end of the call into $OUT/cache.tar.xz.part-* (xz
# in 16 MiB blocks, one thread each: one 290 MB block would take about two minutes of a call's ten;
# the full tier's 290 MB of caches were 8.7 MB as one block, where gzip's 29 MB beside the repository's tracked
# files would not fit in the 64 MiB a call carries; gzip, cache.tgz.part-*, where there is no xz; 15
# MiB parts: the tool returns files of at most 16 MiB). CACHE_FROM=<folder holding such parts>,
# carried in a later call, restores them first, so a run with warm caches (what a runner that has run
# the tier before sees) needs no second call on the same machine, which the tool often does not give
# (s27). On a machine whose caches are already filled (a warm machine), CACHE_FROM keeps them.
# STASH_PART=.carry/<set>-parts/part-N (carried in the same call) first stashes that part of a wheel
# set too large for one call in /tmp/attnsuite-carry (scripts/carry_wheels.py); the call that runs
# gpu_approximate.sh after the last part installs the set.
# The archive $OUT/<call>.tgz is rewritten every PACK_S seconds (default 30) while the call runs, and
# after each part: a call the device tool kills at its limit still returns what its parts had written
# (s13 lost a whole isolation part that way, when the archive was packed only at the end).
# Usage: OUT=dir [STASH_PART=...] bash scripts/gpu_session.sh tier2|tier1a|tier1b|tier1|dist|approx|cpbench|isolation|abeval|devprobe|cigate|cibench|mla|hosttests
set -uo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
call=${1:?tier2, tier1a, tier1b, tier1, dist, approx, cpbench, isolation, abeval, devprobe, cigate, cibench, mla or hosttests}
final=${OUT:-results}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$final"
pack() {
  # written aside and renamed: a kill during tar leaves the previous archive whole
  # the power limits too: a machine that holds its clock under the power cap reads slower (s29, AN)
  nvidia-smi --query-gpu=index,name,clocks.sm,clocks.max.sm,power.limit,power.default_limit,power.max_limit \
    --format=csv > "$work/gpus.txt" 2>&1
  tar -chzf "$final/.$call.tgz.part" -C "$work" . 2> /dev/null && mv -f "$final/.$call.tgz.part" "$final/$call.tgz"
}
# Its output goes nowhere: a sleeping packer that held the caller's stdout had kept the caller (the
# device tool, a test) waiting up to PACK_S after this script ended, the kill below reaching the
# loop's shell and not its sleep.
( while sleep "${PACK_S:-30}"; do pack; done ) > /dev/null 2>&1 &
packer=$!
trap 'kill "$packer" 2> /dev/null; rm -rf "$work"' EXIT
cache=${CACHE_ROOT:-/tmp/attnsuite-cache}  # CACHE_ROOT: for the tests
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$cache/triton} TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$cache/inductor}
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
# The driver's JIT cache too: cuDNN's attention kernels (SDPA's default here) are compiled at run time
# and the driver compiles them for the GPU on first use, 0.6-2.2 s per SDPA step in a fresh process
# against 0.1-0.16 s with this cache filled (scripts/first_call_probe.py, docs/evidence/h200-2026-12-04-s35)
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$cache/cuda} CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
if [ -n "${CACHE_FROM:-}" ]; then
  parts=; unpack=
  for kind in "cache.tar.xz:xz -dc" "cache.tgz:gzip -dc"; do
    if compgen -G "$CACHE_FROM/${kind%%:*}.part-*" > /dev/null; then parts=${kind%%:*}; unpack=${kind#*:}; break; fi
  done
  if [ -n "$(ls -A "$cache" 2> /dev/null)" ]; then
    echo "cache: $cache is already filled on this machine (a warm machine): kept, $CACHE_FROM not restored" | tee "$work/cache.log"
  elif [ -n "$parts" ]; then
    mkdir -p "$cache"
    # shellcheck disable=SC2086  # $unpack is a command and its option
    cat "$CACHE_FROM/$parts".part-* | $unpack | tar -xf - -C "$cache"
    echo "cache: restored from $CACHE_FROM (exit $?): $(du -sh "$cache" | cut -f1)" | tee "$work/cache.log"
  else
    echo "cache: CACHE_FROM=$CACHE_FROM holds no cache.tar.xz.part-* or cache.tgz.part-*: the caches start empty" \
      | tee "$work/cache.log"
  fi
fi
if [ -n "${STASH_PART:-}" ]; then
  python3 scripts/carry_wheels.py stash "$STASH_PART" /tmp/attnsuite-carry > "$work/stash.log" 2>&1
  echo "stash $STASH_PART exit $?" | tee -a "$work/stash.log"
fi
# ci_bench_call NAME DIR LIMIT ARGS...: scripts/ci_bench.sh ARGS with its OUT in DIR (kept on the machine,
# so a later call can resume it), stopped by SIGINT at LIMIT seconds as a cancelled CI job would be
ci_bench_call() {
  local name=$1 dir=$2 limit=$3
  shift 3
  mkdir -p "$work/$name" "$dir"
  ln -s "$dir" "$work/$name/results"  # packed as it grows (tar -h)
  OUT=$dir timeout -s INT "$limit" bash scripts/ci_bench.sh "$@" > "$work/$name/run.log" 2>&1
  echo "$name exit $?" | tee -a "$work/$name/run.log"
}
case "$call" in
  tier2)
    mkdir -p "$work/tier2" "$work/dev" "$work/chk"
    OUT=$work/tier2 timeout -s INT "${TIER_S:-420}" bash scripts/gpu_bench.sh full -- --attn-gpus=2 \
      > "$work/tier2/run.log" 2>&1
    echo "tier2 exit $?" | tee -a "$work/tier2/run.log"
    CUDA_VISIBLE_DEVICES=0 OUT=$work/dev timeout "${DEVTIME_S:-160}" bash scripts/gpu_bench.sh devtime > "$work/dev/run.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 OUT=$work/chk timeout "${CHECKS_S:-160}" bash scripts/gpu_checks.sh > "$work/chk/run.log" 2>&1
    wait ;;
  tier1a|tier1b)
    mkdir -p "$work/$call"
    resume=(); [ "$call" = tier1b ] && resume=(--attn-resume)
    gpus=${GPUS:-1}
    devices=0; [ "$gpus" -gt 1 ] && devices=$(seq -s, 0 $((gpus - 1)))
    CUDA_VISIBLE_DEVICES=$devices OUT=$work/$call timeout -s INT "${TIER_S:-560}" bash scripts/gpu_bench.sh full \
      -- --attn-gpus="$gpus" --attn-journal="${JOURNAL:-/tmp/attnsuite-tier1.journal}" "${resume[@]}" \
      > "$work/$call/run.log" 2>&1
    echo "$call exit $?" | tee -a "$work/$call/run.log" ;;
  tier1)
    mkdir -p "$work/tier1" "$work/triton"
    CUDA_VISIBLE_DEVICES=1 OUT=$work/triton bash scripts/gpu_triton.sh > "$work/triton/run.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=0 OUT=$work/tier1 timeout -s INT "${TIER_S:-570}" bash scripts/gpu_bench.sh full \
      -- --attn-gpus=1 > "$work/tier1/run.log" 2>&1
    echo "tier1 exit $?" | tee -a "$work/tier1/run.log"
    wait ;;
  dist)
    mkdir -p "$work/dist"
    OUT=$work/dist bash scripts/gpu_distributed.sh > "$work/dist/run.log" 2>&1
    echo "dist exit $?" | tee -a "$work/dist/run.log"
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 scripts/devtime_probe.py --out "$work/dist/devtime_probe.jsonl" \
      > "$work/dist/devtime_probe.log" 2>&1
    echo "devtime probe exit $?" | tee -a "$work/dist/run.log" ;;
  approx)
    mkdir -p "$work/approx"
    CUDA_VISIBLE_DEVICES=${APPROX_GPU:-1} OUT=$work/approx timeout "${APPROX_S:-540}" bash scripts/gpu_approximate.sh \
      > "$work/approx/run.log" 2>&1
    echo "approx exit $?" | tee -a "$work/approx/run.log" ;;
  cpbench)
    mkdir -p "$work/cpbench"
    resume=(); [ -n "${CP_RESUME:-}" ] && resume=(--attn-resume)
    OUT=$work/cpbench timeout -s INT "${CP_S:-540}" bash scripts/gpu_bench.sh full \
      -- --attn-workload=context-parallel --attn-gpus=1 --attn-journal=/tmp/cp.journal "${resume[@]}" \
      > "$work/cpbench/run.log" 2>&1
    echo "cpbench exit $?" | tee -a "$work/cpbench/run.log" ;;
  isolation)
    mkdir -p "$work/isolation"
    OUT=$work/isolation PATHS=test_correctness/test_variants.py timeout -s INT "${HOSTILE_S:-150}" bash scripts/gpu_correctness.sh \
      --attn-variants examples/hostile/misbehaving.py --attn-only h-segfault --attn-only h-device-assert \
      --attn-only h-hang --attn-only sdpa-flash --attn-test-timeout 20 -k "test_forward or test_causal" -rsfE \
      > "$work/isolation/hostile.log" 2>&1
    echo "hostile exit $?" | tee -a "$work/isolation/run.log"
    pack
    mkdir -p "$work/isolation/full"
    OUT=$work/isolation/full PATHS=${CORRECTNESS_PATHS:-test_correctness tests} timeout -s INT "${CORRECTNESS_S:-540}" \
      bash scripts/gpu_correctness.sh \
      > "$work/isolation/full/run.log" 2>&1
    echo "correctness exit $?" | tee -a "$work/isolation/run.log" ;;
  abeval)
    abdir=${AB_DIR:-/tmp/attnsuite-abeval}
    mkdir -p "$work/abeval" "$abdir"
    ln -s "$abdir" "$work/abeval/attnsuite-abeval"  # packed as it grows (tar -h)
    variant=${AB_VARIANT:-sdpa-flash}
    # --stop-after: a run the limit would cut is not started (it would be lost); the next call resumes
    # shellcheck disable=SC2086
    timeout -s INT "${AB_S:-540}" python3 scripts/ab_eval.py --out "$abdir" --resume --aa "${AB_AA:-5}" \
      --stop-after "$(( ${AB_S:-540} - 15 ))" \
      --inject "$variant=0.05" --inject "$variant=0.10" -- --attn-tier full ${AB_SELECT:---attn-workload fa-sweep} \
      --attn-only "$variant" > "$work/abeval/run.log" 2>&1
    echo "abeval exit $?" | tee -a "$work/abeval/run.log" ;;
  devprobe)
    mkdir -p "$work/devprobe"
    timeout -s INT "${PROBE_S:-300}" python3 scripts/devtime_probe.py --cases "${PROBE_CASES:-decode}" \
      --out "$work/devprobe/devtime_probe.jsonl" > "$work/devprobe/run.log" 2>&1
    echo "devprobe exit $?" | tee -a "$work/devprobe/run.log"
    timeout -s INT "${DEADROW_S:-150}" python3 scripts/deadrow_probe.py --out "$work/devprobe/deadrow_probe.jsonl" \
      > "$work/devprobe/deadrow.log" 2>&1
    echo "deadrow exit $?" | tee -a "$work/devprobe/deadrow.log" ;;
  cigate)
    resume=(); [ -n "${CIGATE_RESUME:-}" ] && resume=(--attn-resume)
    ci_bench_call cigate "${CIGATE_DIR:-/tmp/attnsuite-cigate}" "${CIGATE_S:-540}" full enforce \
      --attn-require-baseline "${resume[@]}" ;;
  cibench)
    args=${CIBENCH_ARGS:?cibench: set CIBENCH_ARGS to scripts/ci_bench.sh arguments, e.g. "full report --attn-only triton-flash"}
    # shellcheck disable=SC2086  # CIBENCH_ARGS is a list of words
    ci_bench_call cibench "${CIBENCH_DIR:-/tmp/attnsuite-cibench}" "${CIBENCH_S:-540}" $args ;;
  mla)
    mkdir -p "$work/mla"
    timeout -s INT $(( ${MLA_TUNE_S:-300} + 90 )) python3 scripts/mla_tune.py --out "$work/mla" \
      --budget-s "${MLA_TUNE_S:-300}" ${MLA_TUNE_ARGS:-} > "$work/mla/run.log" 2>&1
    echo "mla_tune exit $?" | tee -a "$work/mla/run.log"
    pack
    timeout -s INT "${MLA_BENCH_S:-150}" python3 scripts/triton_bench.py --out "$work/mla" --stages mla \
      > "$work/mla/bench.log" 2>&1
    echo "triton_bench mla exit $?" | tee -a "$work/mla/run.log"
    pack
    mkdir -p "$work/mla/c"
    OUT=$work/mla/c PATHS=test_correctness timeout -s INT "${MLA_TESTS_S:-150}" bash scripts/gpu_correctness.sh \
      -k "mla" > "$work/mla/c/run.log" 2>&1
    echo "mla correctness exit $?" | tee -a "$work/mla/run.log" ;;
  hosttests)
    mkdir -p "$work/hosttests"
    (
      OUT=$work/hosttests
      source scripts/gpu_common.sh  # sets $out from $OUT, $PY, ensure_xdist
      ensure_xdist
      # the README's test command itself, with the image's python (no set-up: nothing installs here)
      ATTNSUITE_TEST_PYTHON=$PY ATTNSUITE_TEST_WORKERS=${WORKERS:-8} timeout -s INT "${HOST_S:-540}" \
        bash scripts/test.sh -rfE --durations=10 ${HOST_ARGS:-} > "$out/run.log" 2>&1
      echo "hosttests exit $? (xdist: $xdist)" | tee -a "$out/run.log"
    ) ;;
  *) echo "gpu_session.sh: unknown call '$call' (tier2, tier1a, tier1b, tier1, dist, approx, cpbench, isolation, abeval, devprobe, cigate, cibench, mla, hosttests)" >&2; exit 2 ;;
esac
if [ -n "${PACK_CACHE:-}" ]; then
  part=${CACHE_PART_SIZE:-15m}  # CACHE_PART_SIZE, CACHE_COMPRESS=gzip: for the tests
  packed_at=$(date +%s)
  if [ "${CACHE_COMPRESS:-xz}" = xz ] && command -v xz > /dev/null 2>&1; then
    name=cache.tar.xz; tar -cf - -C "$cache" . | xz -9 -T0 --block-size=16MiB | split -b "$part" - "$final/$name.part-"
  else
    name=cache.tgz; tar -czf - -C "$cache" . | split -b "$part" - "$final/$name.part-"
  fi
  echo "cache: $(du -sh "$cache" | cut -f1) packed into $(du -ch "$final/$name".part-* | tail -n1 | cut -f1) ($(ls "$final/$name".part-* | wc -l) parts) in $(( $(date +%s) - packed_at )) s" \
    | tee -a "$work/cache.log"
fi
kill "$packer" 2> /dev/null; wait "$packer" 2> /dev/null
pack
for f in "$work"/*/run.log; do echo "--- $f"; tail -8 "$f"; done
