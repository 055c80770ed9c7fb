#!/usr/bin/env bash
# The runs behind results/bench/*.json|md|png (2 parties + TTP dealer, 1 core each,
# on a shared 2-core / 24 GB machine). Llama-7B/8B: one decoder layer (what fits:
# ~14 GB peak at 4096 tokens for one Llama-2-7B layer; see the README).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
B="crypten-mpcache bench"
OUT=results/bench
$B --shape llama2-7b --layers 1 --context 512,1024,2048,4096 --cache full,mpcache \
   --budget 0.05 --dealer ttp --steps 2 \
   --json $OUT/llama2-7b.json --markdown $OUT/llama2-7b.md --plot $OUT/llama2-7b.png
$B --shape smollm2 --layers 8 --context 512,1024,2048,4096 --cache full,mpcache \
   --budget 0.05 --dealer ttp --steps 2 \
   --json $OUT/smollm2.json --markdown $OUT/smollm2.md --plot $OUT/smollm2.png
$B --shape llama3-8b --layers 1 --context 512,1024,2048,4096 --cache full,mpcache \
   --budget 0.05 --dealer ttp --steps 2 \
   --json $OUT/llama3-8b.json --markdown $OUT/llama3-8b.md --plot $OUT/llama3-8b.png
$B --shape smollm2 --layers 8 --context 2048 \
   --cache full,mpcache,mpcache:no-dynamic,mpcache:no-static,mpcache:maxbound,mpcache:no-hierarchy,mpcache:no-sharing \
   --budget 0.05 --dealer ttp --steps 2 \
   --json $OUT/smollm2-ablations.json --markdown $OUT/smollm2-ablations.md
$B --shape llama2-7b --layers 1 --context 2048 \
   --cache full,mpcache,mpcache:no-dynamic,mpcache:no-static,mpcache:maxbound,mpcache:no-hierarchy \
   --budget 0.05 --dealer ttp --steps 2 \
   --json $OUT/llama2-7b-ablations.json --markdown $OUT/llama2-7b-ablations.md
