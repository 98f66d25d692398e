#!/usr/bin/env bash
# The success classifier's campaign (issue 25), outside the test command (about 40 min on 2
# cores): labelled frames from every suite (scripted experts, perturbed experts, a goal-suite
# VLA's rollouts), training + calibration, the held-out figures, latency, and the classifier
# beside 200 VLA episodes. Usage: bash scripts/reward-campaign.sh [OUT_DIR]
# Needs a goal-suite VLA at runs/goal (README: rudder demos --suite goal ..., rudder train vla ...).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/reward-campaign}
mkdir -p "$OUT"
cargo build --release
R=target/release/rudder
if [ ! -e runs/goal/latest ]; then
  $R demos --suite goal --episodes 40 --size 64 --out data/goal
  $R train vla --data data/goal --out runs/goal --chunk 16 --steps 3500 --lr 5e-4 --warmup 200
fi
rm -rf "$OUT/data"
$R reward data --suite all --train-inits 24 --val-inits 8 --test-inits 10 --out "$OUT/data" \
  --policy runs/goal --vla-episodes 24 --quiet | tee "$OUT/data.txt"
$R train reward --data "$OUT/data" --out "$OUT/model" --steps 2500 --batch 32 | tee "$OUT/train.txt"
$R eval reward --model "$OUT/model" --data "$OUT/data" --splits test,heldout_task \
  --reliability "$OUT/reliability.png" --json > "$OUT/eval.json"
$R eval reward --model "$OUT/model" --data "$OUT/data" --splits test,heldout_task | tee "$OUT/eval.txt"
$R bench reward --model "$OUT/model" --data "$OUT/data" --iters 500 --json | tee "$OUT/bench.json"
# 200 VLA episodes on scenes neither model saw (init seed 1; both trained on seed 0), lockstep:
# the classifier's final verdict against the simulator's.
$R eval --suite goal --policy runs/goal --episodes 20 --first-episode 0 --seed 1 --lockstep \
  --reward "$OUT/model" --json > "$OUT/vla_with_reward.json"
# The real-time loop's period error with and without the classifier beside the policy.
$R eval --suite goal --policy runs/goal --episodes 1 --tasks 0,1,2,3,4 --json > "$OUT/rt_plain.json"
$R eval --suite goal --policy runs/goal --episodes 1 --tasks 0,1,2,3,4 --reward "$OUT/model" \
  --json > "$OUT/rt_reward.json"
echo "figures in $OUT"
