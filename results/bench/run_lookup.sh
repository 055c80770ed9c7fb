#!/usr/bin/env bash
# The runs behind results/bench/*-lookup-*.json (2026-11-30): the dealt one-hot (the rank
# top-k's rows in one opening; SiLU read from a table, `--activation lookup`, default)
# and the online / dealer split of every cost, for full and the default MPCache alike.
# 2 parties, 1 core each, on a shared 2-core / 24 GB machine; Llama-7B/8B: one layer.
# (results/bench/llama2-7b-2048-16steps-lookup.json is the same 2048 row with the
# previous SiLU, exp_poly, measured just before the table SiLU became the default.)
# Usage: bash results/bench/run_lookup.sh [TAG] (default silu-lookup; 2026-11-30, later:
# `norm-lookup`, the same rows after the level-by-level gather one-hot, the SiLU gates in
# one round and the 17-round RMSNorm).
set -euo pipefail
TAG=${1:-silu-lookup}
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
B="crypten-mpcache bench --quiet --budget 0.05"
OUT=results/bench
run() {  # name, then bench arguments
  local name=$1; shift
  $B "$@" --json $OUT/$name.json --markdown $OUT/$name.md
}
run llama2-7b-2048-16steps-$TAG --shape llama2-7b --layers 1 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 16
run llama2-7b-4096-8steps-$TAG --shape llama2-7b --layers 1 --context 4096 \
    --cache full,mpcache --dealer ttp --steps 8
run llama2-7b-512-1024-16steps-$TAG --shape llama2-7b --layers 1 --context 512,1024 \
    --cache full,mpcache --dealer ttp --steps 16
run llama3-8b-2048-8steps-$TAG --shape llama3-8b --layers 1 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 8
run smollm2-2048-8steps-$TAG --shape smollm2 --layers 8 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 8
run llama2-7b-2048-16steps-$TAG-tfp --shape llama2-7b --layers 1 --context 2048 \
    --cache full,mpcache --dealer tfp --steps 16
