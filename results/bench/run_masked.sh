#!/usr/bin/env bash
# The runs behind results/bench/*-masked-*.json (2026-11-30): the masked comparison
# (default since commit 69586ff) for full and the default MPCache alike, 2 parties,
# 1 core each, on a shared 2-core / 24 GB machine. Llama-7B/8B: one decoder layer.
# The first run of this script died at 4096 (a party was OOM-killed while the comparison
# unpacked 64 x n bits at once, fixed in the next commit); the 2048 and 4096 rows were
# then re-run with the commands below, after decode budgets started rounding down. The
# 512/1024 rows are from the first run (budget rounded up: at most one token over 5%).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
B="crypten-mpcache bench --quiet --budget 0.05"
OUT=results/bench
$B --shape llama2-7b --layers 1 --context 2048 --cache full,mpcache --dealer ttp --steps 16 \
   --json $OUT/llama2-7b-2048-16steps-masked.json --markdown $OUT/llama2-7b-2048-16steps-masked.md
$B --shape llama2-7b --layers 1 --context 512,1024 --cache full,mpcache --dealer ttp --steps 16 \
   --json $OUT/llama2-7b-512-1024-16steps-masked.json --markdown $OUT/llama2-7b-512-1024-16steps-masked.md
$B --shape llama2-7b --layers 1 --context 4096 --cache full,mpcache --dealer ttp --steps 8 \
   --json $OUT/llama2-7b-4096-8steps-masked.json --markdown $OUT/llama2-7b-4096-8steps-masked.md
$B --shape llama3-8b --layers 1 --context 2048 --cache full,mpcache --dealer ttp --steps 8 \
   --json $OUT/llama3-8b-2048-8steps-masked.json --markdown $OUT/llama3-8b-2048-8steps-masked.md
$B --shape smollm2 --layers 8 --context 2048 --cache full,mpcache --dealer ttp --steps 8 \
   --json $OUT/smollm2-2048-8steps-masked.json --markdown $OUT/smollm2-2048-8steps-masked.md
$B --shape llama2-7b --layers 1 --context 2048 --cache full,mpcache --dealer tfp --steps 16 \
   --json $OUT/llama2-7b-2048-16steps-masked-tfp.json --markdown $OUT/llama2-7b-2048-16steps-masked-tfp.md
