#!/usr/bin/env bash
# The main job end to end on a small synthetic dataset: data -> ingest -> shard -> train (the
# small-data recipe, 2 minutes on the CPU) -> eval on held-out images -> predict on new images.
# Usage: scripts/demo.sh [OUT_DIR]   (make demo runs it with kpconv and python from .venv on PATH)
set -euo pipefail
out=${1:-demo_out}
minutes=${DEMO_MINUTES:-2}
rm -rf "$out"
mkdir -p "$out"
echo "== data: 300 synthetic stick-figure images (benchmarks/synth.py), 8 more as new photos"
python benchmarks/synth.py "$out/data" 300 256 192 0 >/dev/null
python benchmarks/synth.py "$out/new" 8 256 192 1 >/dev/null
echo "== kpconv ingest"
kpconv ingest "$out/data/annotations.json" --images "$out/data/images" -o "$out/manifest.jsonl" \
    --report "$out/ingest_report.jsonl"
echo "== kpconv shard (held out: 15 % of the images)"
kpconv shard "$out/manifest.jsonl" -o "$out/shards" --image-size 256x192 --split train=0.85,test=0.15 \
    --split-by image --seed 0
kpconv inspect "$out/shards" --grid "$out/shards_grid.png" --n 8
echo "== kpconv train (the small-data recipe from random weights, ${minutes} minutes on the CPU)"
kpconv train "$out/shards" -o "$out/run" --weights none --time-limit "$minutes"
echo "== kpconv eval (held-out images)"
kpconv eval "$out/run" "$out/shards" --split test --json "$out/eval.json" --grid "$out/predictions_grid.png"
echo "== kpconv predict (new images)"
kpconv predict "$out/run" "$out/new/images" -o "$out/predictions.jsonl" --draw "$out/drawn"
python - "$out/eval.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["overall"]
print(f"\nheld-out test: PCK@0.1 {o['pck@0.1']:.3f}, mean error {o['mean_error_px']:.2f} px "
      f"(median {o['median_error_px']:.2f} px) over {o['count']} labelled keypoints")
PY
cat <<MSG

Outputs:
  manifest       $out/manifest.jsonl   (problems: $out/ingest_report.jsonl)
  shards         $out/shards/          (contact sheet $out/shards_grid.png)
  trained model  $out/run/             (model.keras, saved_model/, history.csv, config.json)
  evaluation     $out/eval.json
  predictions    $out/predictions_grid.png  (held-out images: predictions over the truth)
                 $out/predictions.jsonl, drawn in $out/drawn/ (new images)
MSG
