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

# The first usable CPU and a usable one that is not its hyperthread sibling: two physical cores, on the same socket
# where there is one (a 2-core machine's cores share a socket and its caches).
cores=$(python3 - <<'EOF'
import os, sys
def topology(cpu, name):
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/{name}") as handle:
            return handle.read().strip()
    except OSError:
        return ""
usable = sorted(os.sched_getaffinity(0))
first = usable[0]
siblings = {first}
for part in filter(None, topology(first, "thread_siblings_list").split(",")):
    low, _, high = part.partition("-")
    siblings.update(range(int(low), int(high or low) + 1))
others = [cpu for cpu in usable if cpu not in siblings]
if not others:
    sys.exit(f"two_core_suite: no usable CPU on another physical core than CPU {first} (usable: {usable})")
socket = topology(first, "physical_package_id")
others.sort(key=lambda cpu: topology(cpu, "physical_package_id") != socket)  # same socket first (a stable sort)
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
