#!/usr/bin/env bash
# The issue-6 CPU benchmarks on two cores of a bigger machine (the targets are for a 2-core machine): the
# training step (bench_train, CPU variants only) and the service at concurrency 1 and 16 (bench_service, the
# model on the CPU), both pinned with taskset to two CPUs on different physical cores, GPUs hidden. Made for
# the GPU host lent now and then, whose Xeon has AMX (so --precision auto trains in bf16 there); time-boxed to
# fit one 10-minute call (the stages' limits add up to 430 s).
#
#   bash benchmarks/two_core_suite.sh OUT_DIR DATA_ROOT
#
# Writes OUT_DIR/two_core.log and the benchmarks' JSON. Exits with the first failing stage's status (0 if none).
set -uo pipefail
usage="usage: two_core_suite.sh OUT_DIR DATA_ROOT"
mkdir -p "${1:?$usage}" || exit 2
out=$(cd "$1" && pwd)
data=$(cd "${2:?$usage}" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=
exec > >(tee -a "$out/two_core.log") 2>&1
tee_pid=$!
status=0

# The first usable CPU and the first usable one that is not its hyperthread sibling: two physical cores.
cores=$(python3 - <<'EOF'
import os, sys
usable = sorted(os.sched_getaffinity(0))
first = usable[0]
siblings = {first}
try:
    with open(f"/sys/devices/system/cpu/cpu{first}/topology/thread_siblings_list") as handle:
        for part in handle.read().strip().split(","):
            low, _, high = part.partition("-")
            siblings.update(range(int(low), int(high or low) + 1))
except OSError:
    pass
others = [cpu for cpu in usable if cpu not in siblings]
if not others:
    sys.exit(f"two_core_suite: no usable CPU on another physical core than CPU {first} (usable: {usable})")
print(f"{first},{others[0]}")
EOF
) || exit 2

stage() {
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    echo "== $name: limit ${limit} s, $(date -u +%T)"
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ]; then status=$rc; fi
}

echo "pinned to CPUs $cores"
stage info 20 bash -c "lscpu | grep -E 'Model name|Thread|Core|Socket|L2|L3'; grep -o -w 'amx[a-z_0-9]*' /proc/cpuinfo \
    | sort -u | tr '\n' ' '; echo; taskset -c $cores python3 -c 'import torch; from models.device import cpu_has_amx; \
print(torch.__version__, torch.get_num_threads(), \"threads; cpu_has_amx:\", cpu_has_amx())'"
stage bench_train 170 taskset -c "$cores" python3 -m benchmarks.bench_train --data "$data" --no-cuda --threads 2 \
    --rounds 4 --round-seconds 5 --json "$out/bench_train_2core.json"
stage bench_service 240 taskset -c "$cores" python3 -m benchmarks.bench_service --data "$data" --concurrency 1,16 \
    --rounds 2 --requests 192 --batch-sizes 1,2,4,8 --seconds 1 --no-overload --json "$out/bench_service_2core.json"
echo "== suite: exit $status"
exec >&- 2>&-
wait "$tee_pid"
exit "$status"
