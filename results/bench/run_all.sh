#!/usr/bin/env bash
# The runs behind the current results/bench/llama2-7b.*, llama3-8b-2048.*, smollm2-2048.*
# and llama2-7b-ablations-2048.* (2 parties + TTP dealer, 1 core each, on a shared
# 2-core / 24 GB machine). Llama-7B/8B: one decoder layer (~11-14 GB peak; see the
# README). On 2026-11-29 the first command was OOM-killed (other jobs held 8-16 GB) and
# its rows were completed by per-context runs (the commented block below) whose rows were
# merged into llama2-7b.json (rows[].source_command); the README says which row came from
# which run. With enough free memory the first command alone produces the same table.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
B="crypten-mpcache bench"
OUT=results/bench
COMMON="--budget 0.05 --dealer ttp --steps 1"
$B --shape llama2-7b --layers 1 --context 512,1024,2048,4096 \
   --cache full,mpcache,mpcache:paper,mpcache:layer-scope-one-level $COMMON \
   --json $OUT/llama2-7b.json --markdown $OUT/llama2-7b.md --plot $OUT/llama2-7b.png
# What actually produced llama2-7b.json (after the run above died at 1024 mpcache:paper):
#   $B --shape llama2-7b --layers 1 --context 2048 --cache full,mpcache,mpcache:paper,mpcache:layer-scope-one-level $COMMON --json /tmp/hA/llama2-7b-2048.json --markdown /tmp/hA/llama2-7b-2048.md
#   $B --shape llama2-7b --layers 1 --context 4096 --cache full,mpcache,mpcache:paper,mpcache:layer-scope-one-level $COMMON --json /tmp/hA/llama2-7b-4096.json --markdown /tmp/hA/llama2-7b-4096.md   # full only, then OOM
#   $B --shape llama2-7b --layers 1 --context 1024 --cache mpcache:paper,mpcache:layer-scope-one-level $COMMON --json /tmp/hA/llama2-7b-1024b.json --markdown /tmp/hA/llama2-7b-1024b.md   # paper only, then OOM
#   $B --shape llama2-7b --layers 1 --context 4096 --cache mpcache,mpcache:paper,mpcache:layer-scope-one-level $COMMON --json /tmp/hA/llama2-7b-4096c.json --markdown /tmp/hA/llama2-7b-4096c.md
#   $B --shape llama2-7b --layers 1 --context 1024 --cache mpcache:layer-scope-one-level $COMMON --json /tmp/hA/llama2-7b-1024c.json --markdown /tmp/hA/llama2-7b-1024c.md
#   (rows merged, then) $B --report-only $OUT/llama2-7b.json --markdown $OUT/llama2-7b.md --plot $OUT/llama2-7b.png
$B --shape llama3-8b --layers 1 --context 2048 \
   --cache full,mpcache,mpcache:paper,mpcache:layer-scope-one-level $COMMON \
   --json $OUT/llama3-8b-2048.json --markdown $OUT/llama3-8b-2048.md
$B --shape smollm2 --layers 8 --context 2048 --cache full,mpcache,mpcache:paper $COMMON \
   --json $OUT/smollm2-2048.json --markdown $OUT/smollm2-2048.md
$B --report-only $OUT/smollm2-2048.json --plot $OUT/smollm2-2048.png
$B --shape llama2-7b --layers 1 --context 2048 \
   --cache full,mpcache:paper,mpcache:no-dynamic,mpcache:no-static,mpcache:maxbound,mpcache:no-hierarchy \
   $COMMON --json $OUT/llama2-7b-ablations-2048.json --markdown $OUT/llama2-7b-ablations-2048.md
# Steady-state check of the tuned default (3 decode steps; step 1 opens a new cluster):
$B --shape llama2-7b --layers 1 --context 2048 --cache mpcache --budget 0.05 --dealer ttp \
   --steps 3 --json $OUT/llama2-7b-2048-mpcache-3steps.json --markdown $OUT/llama2-7b-2048-mpcache-3steps.md
# All ratios incl. network-only latency:
python $OUT/ratios.py $OUT/llama2-7b.json $OUT/llama3-8b-2048.json $OUT/smollm2-2048.json \
   $OUT/llama2-7b-ablations-2048.json
