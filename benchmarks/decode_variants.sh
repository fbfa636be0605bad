#!/usr/bin/env bash
# Decoding-step variants of the released 1.4B RQ-Transformer shape (E=1536, 42 spatial + 6 depth layers, 24 heads,
# K=16384, random weights, bf16, 8x8x4 codes, compiled) at one batch size on one GPU, timed round-robin in one run
# next to the original sampler (fp32 and fp16 autocast) on the same weights:
#   - query/key/value: separate and fused (model.fuse_qkv_projections());
#   - torch.compile mode: auto (generate(compile=True): reduce-overhead on GPU) and max-autotune (GEMM
#     tile/split-K search, also CUDA graphs): at batch 100 an N=1536 projection has ~12 output tiles for 132 SMs;
#   - one profile of the fastest rq-hf variant (top operators printed, Chrome trace gzipped).
# Other attention variants: SPEED_ARGS="--attn-implementation sdpa eager decode_reduction".
# Rows append to OUTPUT_DIR/decode_variants.json; the printed table goes to OUTPUT_DIR/decode_variants_b<B>.txt.
# Each compiled variant compiles once (50-80 s on an H200, longer with max-autotune): one batch size per call.
# TOTAL_SECONDS bounds when new measurements may start. Extra sampling_speed.py arguments go in $SPEED_ARGS
# (e.g. a smaller model for a dry run).
#
#   benchmarks/decode_variants.sh ORIGINAL_SRC OUTPUT_DIR BATCH [TOTAL_SECONDS]
set -uo pipefail
original_src=$1
output_dir=$2
batch=$3
total_seconds=${4:-500}
here=$(dirname "$0")
mkdir -p "$output_dir"
# shellcheck disable=SC2206
extra=(${SPEED_ARGS:-})
python3 "$here/sampling_speed.py" --device "${DEVICE:-cuda}" --dtype bf16 \
    --hidden-size 1536 --spatial-layers 42 --depth-layers 6 --heads 24 --codebook-size 16384 \
    --code-shape 8 8 4 --batch-size "$batch" --compile --no-reference --repeats 2 \
    --original-src "$original_src" --original-precision fp32 fp16 \
    --qkv separate fused --compile-mode auto max-autotune \
    --json-output "$output_dir/decode_variants.json" --profile "$output_dir/profile.json" \
    --time-budget "$total_seconds" "${extra[@]}" | tee "$output_dir/decode_variants_b$batch.txt"
status=${PIPESTATUS[0]}
gzip -f "$output_dir"/profile-batch*.json 2>/dev/null
exit "$status"
