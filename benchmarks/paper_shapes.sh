#!/usr/bin/env bash
# Sampling speed of the released 1.4B RQ-Transformer shape (E=1536, 42 spatial + 6 depth layers, 24 heads,
# K=16384, random weights, bf16, compiled) on one GPU, next to the original sampler on the same weights:
#   1. codes 8x8x4 at batch 100, 500, 200: AR and end to end (batched RQ-VAE decoding), original fp32 and fp16;
#   2. codes 16x16x1 (the paper's VQ-GAN comparison shape) at the same batches, AR only;
#   3. the paper's Figure 4 (AR images/s per batch size, both shapes) as a PNG.
# Rows append to OUTPUT_DIR/sampling_speed.json; printed tables go to OUTPUT_DIR/*.txt. TOTAL_SECONDS bounds
# when new measurements may start (a compile already under way finishes), for leased machines.
#
#   benchmarks/paper_shapes.sh ORIGINAL_SRC OUTPUT_DIR [TOTAL_SECONDS]
# Each step runs even if an earlier one failed; the exit status is 1 if any did.
# Extra arguments for benchmarks/sampling_speed.py (e.g. a smaller model for a dry run) go in $SPEED_ARGS.
set -uo pipefail
status=0
original_src=$1
output_dir=$2
total_seconds=${3:-3600}
here=$(dirname "$0")
mkdir -p "$output_dir"
model=(--hidden-size 1536 --spatial-layers 42 --depth-layers 6 --heads 24 --codebook-size 16384)
common=(--device "${DEVICE:-cuda}" --dtype bf16 "${model[@]}" --compile --no-reference --repeats 2
        --original-src "$original_src" --json-output "$output_dir/sampling_speed.json")
# shellcheck disable=SC2206
extra=(${SPEED_ARGS:-})

python3 "$here/sampling_speed.py" "${common[@]}" --code-shape 8 8 4 --batch-size 100 500 200 --end-to-end \
    --original-precision fp32 fp16 --time-budget $((total_seconds * 6 / 10)) "${extra[@]}" \
    | tee "$output_dir/sampling_speed_8x8x4.txt" || status=1
python3 "$here/sampling_speed.py" "${common[@]}" --code-shape 16 16 1 --batch-size 100 500 200 \
    --original-precision fp32 --time-budget $((total_seconds - SECONDS)) "${extra[@]}" \
    | tee "$output_dir/sampling_speed_16x16x1.txt" || status=1
python3 -c "
import sys
from rq_hf.evaluation import plot_sampling_speed
plot_sampling_speed(sys.argv[1], sys.argv[2], stage='AR', title='RQ-Transformer 1.4B shape, AR sampling')
" "$output_dir/sampling_speed.json" "$output_dir/figure4_sampling_speed.png" || status=1
exit $status
