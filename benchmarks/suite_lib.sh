# Shared by the time-boxed benchmark suites (gpu_suite.sh, two_core_suite.sh); sourced, not run.
#
#   suite_start NAME LOG_NAME "$@"   OUT_DIR DATA_ROOT from the suite's arguments -> $out, $data; cd to the
#                                    repository root; everything printed also goes to OUT_DIR/LOG_NAME
#   stage NAME SECONDS SIGNAL CMD... CMD for at most SECONDS (then SIGNAL, then KILL 10 s later)
#   suite_end                        print the status, flush the log, exit with the first failing stage's status
#
# --preserve-status: a stage stopped by its SIGNAL reports its own exit (vqvae-train's 130 after saving on
# SIGINT, which is then no failure). A stage runs in timeout's process group, so a Ctrl-C at the terminal does
# not reach it: it ends at its own limit.

suite_start() {
    local usage="usage: $1 OUT_DIR DATA_ROOT" log=$2
    mkdir -p "${3:?$usage}" || exit 2
    out=$(cd "$3" && pwd)
    data=$(cd "${4:?$usage}" && pwd) || exit 2
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2 # the repository root: the stages name its files
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    exec > >(tee -a "$out/$log") 2>&1
    tee_pid=$!
    status=0
}

stage() {
    local name=$1 limit=$2 signal=$3 started=$SECONDS rc
    shift 3
    echo "== $name: limit ${limit} s, $(date -u +%T)"
    timeout --preserve-status -s "$signal" -k 10 "$limit" "$@"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ] && ! { [ "$signal" = INT ] && [ "$rc" -eq 130 ]; }; then
        status=$rc
    fi
}

suite_end() {
    echo "== suite: exit $status"
    exec >&- 2>&-
    wait "$tee_pid" # so that the log is complete when the suite returns
    exit "$status"
}
