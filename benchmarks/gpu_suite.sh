#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one time-boxed run: the CUDA tests, the shipped checkpoint's test-split
# evaluation on the GPU, the model / training / service benchmarks on the GPU, and a short real training run that
# is interrupted and resumed. Each stage has its own time limit, so one that hangs costs only its own share; the
# limits add up to 495 s, and with each stage's 10 s of kill grace the suite ends within 10 minutes.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR DATA_ROOT
#
# DATA_ROOT is an OASIS root (keras_png_slices_{train,validate,test}); a subset of the training split will do.
# Writes OUT_DIR/suite.log (everything), the benchmarks' JSON, the evaluation report, and the training run's
# history and best checkpoint: eight files at most. Exits with the first failing stage's status (0 if none).
# Stage plumbing: benchmarks/suite_lib.sh.
#
# docs/cuda_h200_suite.txt is its log on an NVIDIA H200 (16 CPU cores), from an earlier version: there the
# service stage ran concurrency 1,4,16,64 in two rounds and ran out of its time before the overload phase, and
# the training stages reported timeout's 124 rather than vqvae-train's 130. The lighter service stage below, and
# bench_train's CUDA-only variants, ran afterwards: docs/cuda_h200_train_and_service.txt.
set -uo pipefail
source "$(dirname "$0")/suite_lib.sh"
suite_start gpu_suite.sh suite.log "$@"
run=$(mktemp -d)

stage info 20 TERM bash -c 'nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.version.cuda, torch.cuda.get_device_name(0), torch.get_num_threads(), \"threads\")"'
stage tests 90 TERM python3 -m pytest -q -p no:cacheprovider tests/app/test_app_cuda.py \
    tests/training/test_cuda_training.py tests/training/test_precision.py tests/models/test_shipped_checkpoint.py \
    tests/models/test_quality_torch.py tests/training/test_evaluate.py
stage bench_train 100 TERM python3 -m benchmarks.bench_train --data "$data" --rounds 3 \
    --round-seconds 3 --json "$out/bench_train.json"
stage eval 45 TERM python3 -m training.evaluate --checkpoint models/weights/vqvae.safetensors --data "$data" \
    --split test --device cuda --out "$out/eval_cuda_test.json" --figures "$run/figures"
stage bench_model 45 TERM python3 -m benchmarks.bench_model --data "$data" --device cuda \
    --batch-sizes 1,2,4,8,16,32,64,128 --seconds 1 --json "$out/bench_model.json"
stage bench_service 100 TERM python3 -m benchmarks.bench_service --data "$data" --server-env VQVAE_DEVICE=cuda \
    --concurrency 1,16,64 --rounds 1 --requests 128 --seconds 1 --overload-requests 256 --json "$out/bench_service.json"
# Stopped by SIGINT (Ctrl-C), on which vqvae-train saves its state and exits 130, then resumed from that state.
stage train 60 INT python3 -m training.train --device cuda --data "$data" --out "$run/train" --epochs 30 --no-progress
stage resume 35 INT python3 -m training.train --device cuda --data "$data" --out "$run/train" --epochs 30 \
    --no-progress --resume
cp "$run/train/history.csv" "$run/train/best.safetensors" "$out/" 2>/dev/null
ls -l "$out"
suite_end
