#!/usr/bin/env bash
# Steady-state cost of `tcache serve` on a generated tree of N templates (default 100,000)
# against a local redis-server: resident memory after the first full warm and after EVENTS
# file changes (default 10,000), and the CPU time it uses while nothing changes.
#
#   bash benches/serve_cost.sh                       # N=100000 EVENTS=10000 IDLE=30
#   N=10000 EVENTS=2000 IDLE=10 bash benches/serve_cost.sh
#
# Needs redis-server and python3. The server listens on 127.0.0.1 only; everything started is
# stopped on exit.
set -euo pipefail
N=${N:-100000}
EVENTS=${EVENTS:-10000}
IDLE=${IDLE:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

echo "== building (release)" >&2
cargo build --release -q -p template-cache-cli -p template-cache-bench --bins
T="$ROOT/target/release/tcache"
GEN="$ROOT/target/release/tcache-corpus"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== generating $N templates" >&2
"$GEN" "$WORK/tree" "$N" 42 >&2
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --logfile "$WORK/redis.log" --dir "$WORK" &
PIDS+=($!)
sleep 0.5
export TCACHE_BACKEND="redis://127.0.0.1:$RP" TCACHE_STATE_DIR="$WORK/state"

rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$T" -v serve "$WORK/tree" --check-every 0 --deep-check-every 0 2>"$WORK/serve.log" &
SERVE=$!
PIDS+=("$SERVE")
started=$(date +%s.%N)
until grep -q 'warmed kind="full"' "$WORK/serve.log"; do
  kill -0 "$SERVE" || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.1
done
ready=$(date +%s.%N)
sleep 2
echo "first full warm: $(python3 -c "print(round($ready - $started, 2))") s"
echo "after the first warm: RSS $(rss "$SERVE") MB (peak $(hwm "$SERVE") MB)"

# EVENTS changes: edits of existing files in rounds of 100, each round written then awaited.
mapfile -t FILES < <(cd "$WORK/tree" && find . -type f -name '*.html' | head -n 5000)
rounds=$(( EVENTS / 100 ))
for r in $(seq 1 "$rounds"); do
  for k in $(seq 0 99); do
    f="${FILES[$(( (r * 100 + k) % ${#FILES[@]} ))]}"
    printf 'edit %s %s\n' "$r" "$k" > "$WORK/tree/$f"
  done
  sleep 0.2
  if [ $(( r % 20 )) = 0 ]; then
    echo "  after $(( r * 100 )) changes: RSS $(rss "$SERVE") MB" >&2
  fi
done
sleep 2
echo "after $EVENTS changes: RSS $(rss "$SERVE") MB (peak $(hwm "$SERVE") MB)"
"$T" check "$WORK/tree" >/dev/null && echo "check after the changes: consistent"

# Idle: nothing changes for IDLE seconds.
hz=$(getconf CLK_TCK)
before=$(cpu_ticks "$SERVE")
sleep "$IDLE"
after=$(cpu_ticks "$SERVE")
python3 -c "t=($after-$before)/$hz; print(f'idle: {t:.2f} s of CPU in $IDLE s ({100*t/$IDLE:.2f}% of one core)')"
echo "final: RSS $(rss "$SERVE") MB"
