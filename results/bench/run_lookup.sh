#!/usr/bin/env bash
# The runs behind results/bench/*-lookup-*.json (2026-11-30): the dealt one-hot (the rank
# top-k's rows in one opening; SiLU read from a table, `--activation lookup`, default)
# and the online / dealer split of every cost, for full and the default MPCache alike.
# 2 parties, 1 core each, on a shared 2-core / 24 GB machine; Llama-7B/8B: one layer.
# (results/bench/llama2-7b-2048-16steps-lookup.json is the same 2048 row with the
# previous SiLU, exp_poly, measured just before the table SiLU became the default.)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
B="crypten-mpcache bench --quiet --budget 0.05"
OUT=results/bench
run() {  # name, then bench arguments
  local name=$1; shift
  $B "$@" --json $OUT/$name.json --markdown $OUT/$name.md
}
run llama2-7b-2048-16steps-silu-lookup --shape llama2-7b --layers 1 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 16
run llama2-7b-4096-8steps-silu-lookup --shape llama2-7b --layers 1 --context 4096 \
    --cache full,mpcache --dealer ttp --steps 8
run llama2-7b-512-1024-16steps-silu-lookup --shape llama2-7b --layers 1 --context 512,1024 \
    --cache full,mpcache --dealer ttp --steps 16
run llama3-8b-2048-8steps-silu-lookup --shape llama3-8b --layers 1 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 8
run smollm2-2048-8steps-silu-lookup --shape smollm2 --layers 8 --context 2048 \
    --cache full,mpcache --dealer ttp --steps 8
run llama2-7b-2048-16steps-silu-lookup-tfp --shape llama2-7b --layers 1 --context 2048 \
    --cache full,mpcache --dealer tfp --steps 16
