#!/usr/bin/env bash
# The diffusion driving planner's campaign (issue 27), outside the test command (about an hour
# of training and half an hour of scoring on 2 cores): demos from 800 generated scenarios (seed
# 100), training, then on 48 scenarios of seed 7 that training never saw: CLS-NR and CLS-R beside
# log replay, constant velocity and IDM; CLS-NR by solver steps for both samplers (24
# scenarios); guidance; latency. Usage: bash scripts/planner-campaign.sh [OUT_DIR] [CHECKPOINT]
# (with CHECKPOINT, training is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/planner-campaign}
CKPT=${2:-}
mkdir -p "$OUT"
cargo build --release
R=target/release/rudder
if [ -z "$CKPT" ]; then
  [ -e data/driving-800p/meta.json ] || \
    $R demos driving --scenarios 800 --seed 100 --stride 4 --perturb 0.5 --out data/driving-800p
  $R train planner --data data/driving-800p --out runs/planner --steps 5000 --resume \
    | tee "$OUT/train.txt"
  CKPT=runs/planner
fi
$R bench planner --checkpoint "$CKPT" --solver-steps 10 --runs 200 --json | tee "$OUT/bench10.json"
$R bench planner --checkpoint "$CKPT" --solver-steps 10 --sampler ddim --runs 200 --json \
  | tee "$OUT/bench10-ddim.json"
for mode in nonreactive reactive; do
  for p in log-replay constant-velocity idm; do
    $R sim driving --planner $p --scenarios 48 --seed 7 --mode $mode --json > "$OUT/$p-$mode.json"
  done
  $R sim driving --planner diffusion --checkpoint "$CKPT" --scenarios 48 --seed 7 --mode $mode \
    --json > "$OUT/diffusion-$mode.json"
done
for sampler in dpm ddim; do
  for steps in 3 5 10 20; do
    $R sim driving --planner diffusion --checkpoint "$CKPT" --scenarios 24 --seed 7 \
      --sampler $sampler --solver-steps $steps --json > "$OUT/steps-$sampler-$steps.json"
  done
done
for g in 0.5 2; do
  $R sim driving --planner diffusion --checkpoint "$CKPT" --scenarios 24 --seed 7 --guidance $g \
    --json > "$OUT/guidance-$g.json"
done
for f in "$OUT"/*.json; do
  jq -r --arg f "$(basename "$f" .json)" \
    'select(.score != null) | [$f, .score, .metrics.no_ego_at_fault_collisions,
     .metrics.drivable_area_compliance, .metrics.ego_progress, .metrics.ego_is_comfortable,
     (.plans.latency_ms.p99 // "")] | @tsv' "$f"
done | column -t | tee "$OUT/summary.txt"
