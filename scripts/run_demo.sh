#!/usr/bin/env bash
# The demo: sets the checkout up (a no-op when done), then runs the node with the built-in
# backends over DDS on a DAVIS 2016 sequence with its referring command from expressions.json,
# and writes out/demo/overlay.mp4, out/demo/masks/<frame>.png and out/demo/summary.json (with
# J and F against the ground truth). Arguments: [SEQUENCE [KIND]] (KIND: referring or reasoning).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEQ=${1:-parkour}
KIND=${2:-referring}
DATA=${STEERSEG_SHARED:-$ROOT/../shared}/data/davis16
bash "$ROOT/scripts/setup_env.sh"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
if [ ! -d "$DATA/JPEGImages/480p/$SEQ" ]; then
  echo "no DAVIS 2016 frames at $DATA/JPEGImages/480p/$SEQ (set STEERSEG_SHARED to the shared folder)" >&2
  exit 1
fi
COMMAND=$(python -c 'import json, sys
videos = json.load(open(sys.argv[1]))["videos"]
print(next(e["exp"] for e in videos[sys.argv[2]]["expressions"] if e["kind"] == sys.argv[3]))' \
  "$DATA/expressions.json" "$SEQ" "$KIND")
echo "[demo] $SEQ: \"$COMMAND\"" >&2
OUT=$ROOT/out/demo
rm -rf "$OUT"
exec steerseg-demo --frames "$DATA/JPEGImages/480p/$SEQ" --command "$COMMAND" \
  --grounder builtin --tracker builtin --out "$OUT" \
  --ground-truth "$DATA/Annotations/480p/$SEQ"
