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
source "$(dirname "$0")/suite_lib.sh"
suite_start two_core_suite.sh two_core.log "$@"
export CUDA_VISIBLE_DEVICES=

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

echo "pinned to CPUs $cores"
stage info 20 TERM bash -c "lscpu | grep -E 'Model name|Thread|Core|Socket|L2|L3'; grep -o -w 'amx[a-z_0-9]*' /proc/cpuinfo \
    | sort -u | tr '\n' ' '; echo; taskset -c $cores python3 -c 'import torch; from models.device import cpu_has_amx; \
print(torch.__version__, torch.get_num_threads(), \"threads; cpu_has_amx:\", cpu_has_amx())'"
stage bench_train 170 TERM taskset -c "$cores" python3 -m benchmarks.bench_train --data "$data" --no-cuda --threads 2 \
    --rounds 4 --round-seconds 5 --json "$out/bench_train_2core.json"
stage bench_service 240 TERM taskset -c "$cores" python3 -m benchmarks.bench_service --data "$data" --concurrency 1,16 \
    --rounds 2 --requests 192 --batch-sizes 1,2,4,8 --seconds 1 --no-overload --json "$out/bench_service_2core.json"
suite_end
