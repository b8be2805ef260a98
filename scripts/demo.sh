#!/usr/bin/env bash
# The whole chain on the bundled fixture dataset: ingest -> shard -> train -> eval -> predict.
# Usage: scripts/demo.sh [OUT_DIR]   (make demo runs it with kpconv on PATH)
set -euo pipefail
out=${1:-demo_out}
src=fixtures/coco/annotations.json
rm -rf "$out"
mkdir -p "$out"
echo "== kpconv ingest $src"
kpconv ingest "$src" -o "$out/manifest.jsonl" --report "$out/ingest_report.jsonl"
echo "== kpconv shard"
kpconv shard "$out/manifest.jsonl" -o "$out/shards" --image-size 64 --split train=0.7,val=0.3 --seed 0
kpconv inspect "$out/shards" --grid "$out/shards_grid.png" --n 8
echo "== kpconv train (tiny model, a few epochs on the CPU)"
kpconv train "$out/shards" -o "$out/run" --weights none --alpha 0.35 --epochs 3 --batch-size 8
echo "== kpconv eval"
kpconv eval "$out/run" "$out/shards" --split val --json "$out/eval.json"
echo "== kpconv predict"
first_image=$(ls fixtures/coco/images/* | head -n 1)
kpconv predict "$out/run" "$first_image" -o "$out/predictions.jsonl" --draw "$out/drawn"
cat <<MSG

Outputs:
  manifest       $out/manifest.jsonl   (problems: $out/ingest_report.jsonl)
  shards         $out/shards/          (dataset_info.json; contact sheet $out/shards_grid.png)
  trained model  $out/run/             (model.keras, saved_model/, history.csv, config.json)
  evaluation     $out/eval.json
  predictions    $out/predictions.jsonl (drawn: $out/drawn/)
MSG
