#!/usr/bin/env bash
# The reset-free RL campaign (issue 26), outside the test command (about 75 min on 2 cores):
# forward + backward goal demos, the VLA trained on both, a classifier that knows both
# directions, offline Cal-QL, 50k online reset-free steps, and the held-out comparison of BC,
# zero noise, offline only and offline + online (init states 40-49, seeds 0 and 1, lockstep).
# Usage: bash scripts/rl-campaign.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/rl-campaign}
mkdir -p "$OUT"
cargo build --release
R=target/release/rudder
TASKS=0,1,2,3,4,5,6,7,8 # close_drawer (9) is the classifier's held-out task
rm -rf "$OUT/demos" "$OUT/reward-data"
$R demos --suite goal --with-backward --episodes 40 --size 64 --out "$OUT/demos"
$R train vla --data "$OUT/demos" --variant flow --out "$OUT/vla" --steps 8000 --lr 5e-4 \
  --chunk 16 --warmup 200 --log-every 500 --quiet
$R reward data --suite goal --with-backward --train-inits 24 --val-inits 8 --test-inits 10 \
  --out "$OUT/reward-data" --policy "$OUT/vla" --vla-episodes 24 --quiet
$R train reward --data "$OUT/reward-data" --out "$OUT/reward" --steps 1800 --log-every 200 --quiet
$R eval reward --model "$OUT/reward" --data "$OUT/reward-data" --json > "$OUT/eval_reward.json"
common=(--policy "$OUT/vla" --reward "$OUT/reward" --tasks "$TASKS" --quiet)
# An untrained actor (its mode is zero noise), offline Cal-QL only, then the full run.
$R train rl "${common[@]}" --steps 200 --out "$OUT/rl-zero"
$R train rl "${common[@]}" --steps 200 --out "$OUT/rl-offline" --demos "$OUT/demos" \
  --demos-per-task 10 --offline-updates 2000
$R train rl "${common[@]}" --steps 50000 --out "$OUT/rl" --demos "$OUT/demos" \
  --demos-per-task 10 --offline-updates 2000 --checkpoint-every 5000 --rerun "$OUT/rl.rrd" \
  | tee "$OUT/rl.txt"
for seed in 0 1; do
  $R eval --suite goal --policy "$OUT/vla" --episodes 10 --seed $seed --lockstep --json \
    > "$OUT/eval_bc_s$seed.json"
  for agent in rl-zero rl-offline rl; do
    $R eval --suite goal --policy "$OUT/vla" --rl "$OUT/$agent" --episodes 10 --seed $seed \
      --lockstep --json > "$OUT/eval_${agent}_s$seed.json"
  done
done
# Through the real-time loop (the issue's protocol), seed 0.
$R eval --suite goal --policy "$OUT/vla" --episodes 10 --json > "$OUT/eval_bc_realtime.json"
$R eval --suite goal --policy "$OUT/vla" --rl "$OUT/rl" --episodes 10 --json \
  > "$OUT/eval_rl_realtime.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ["bc", "rl-zero", "rl-offline", "rl"]:
    k = n = 0
    for s in (0, 1):
        r = json.load(open(f"{out}/eval_{name}_s{s}.json"))
        k += r["successes"]; n += r["episodes"]
    print(f"{name:>10}: {k}/{n} held-out episodes (lockstep, seeds 0 and 1)")
PY
