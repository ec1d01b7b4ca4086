#!/usr/bin/env bash
# Interop test: the Rust warmer (tcache) writes examples/templates to Redis and to two Memcached
# servers; the Python reader (interop/read_cache.py, written from docs/format.md) reads both back
# and verifies them, then must fail, naming the entry, once an entry is corrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

NS=interop
TEMPLATES=examples/templates
PY=${PYTHON:-python3}
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the tree

fail() { echo "interop FAIL: $*" >&2; exit 1; }

# TCACHE_BIN=path uses an already built binary instead of building one.
if [ -n "${TCACHE_BIN:-}" ]; then
  TCACHE=$TCACHE_BIN
else
  echo "== interop: building tcache"
  cargo build --quiet --bin tcache
  target_dir=$(cargo metadata --format-version 1 --no-deps \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  TCACHE="$target_dir/debug/tcache"
fi
[ -x "$TCACHE" ] || fail "no binary at $TCACHE"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three free loopback ports, held open together so that they are distinct.
read -r RP MP1 MP2 < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks: s.close()')

redis-server --bind 127.0.0.1 --port "$RP" --save '' --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" &
pids+=($!)
# memcached refuses to run as root without -u; as another user -u is ignored.
memcached -l 127.0.0.1 -p "$MP1" -U 0 -m 64 -u "$(id -un)" >"$tmp/mc1.log" 2>&1 &
pids+=($!)
memcached -l 127.0.0.1 -p "$MP2" -U 0 -m 64 -u "$(id -un)" >"$tmp/mc2.log" 2>&1 &
pids+=($!)

wait_port() {
  for _ in $(seq 100); do
    "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" \
      2>/dev/null && return 0
    sleep 0.1
  done
  cat "$tmp"/*.log >&2 || true
  fail "nothing listens on 127.0.0.1:$1"
}
wait_port "$RP"; wait_port "$MP1"; wait_port "$MP2"

MC="127.0.0.1:$MP1,127.0.0.1:$MP2"
MC_REVERSED="127.0.0.1:$MP2,127.0.0.1:$MP1"
files=$(find "$TEMPLATES" -type f | wc -l)
key_of() { "$PY" -c 'import hashlib, sys; print(sys.argv[1] + ":" + hashlib.sha256(sys.argv[2].encode()).hexdigest())' "$NS" "$1"; }

# expect STATUS OUTFILE -- COMMAND...: runs COMMAND, output to OUTFILE (and shown), checks status.
expect() {
  local want=$1 out=$2; shift 3
  local rc=0
  "$@" >"$out" 2>&1 || rc=$?
  sed 's/^/    /' "$out"
  [ "$rc" = "$want" ] || fail "exit status $rc, expected $want: $*"
}

"$PY" interop/read_cache.py --self-test

for backend in redis memcached; do
  if [ $backend = redis ]; then
    url="redis://127.0.0.1:$RP"; reader=(--redis "127.0.0.1:$RP")
  else
    url="memcache://$MC"; reader=(--memcached "$MC")
  fi
  echo "== interop: tcache warm $url"
  "$TCACHE" --backend "$url" --namespace "$NS" --state-dir "$tmp/state-$backend" \
    warm "$TEMPLATES" >"$tmp/warm-$backend.log" 2>&1 || { cat "$tmp/warm-$backend.log"; fail "warm $url"; }

  echo "== interop: python reader on $backend"
  expect 0 "$tmp/out" -- "$PY" interop/read_cache.py "${reader[@]}" --namespace "$NS"
  grep -q ": $files index entries (0 pending), $files records verified, 0 mismatches" "$tmp/out" \
    || fail "expected $files verified entries from $backend"
done

echo "== interop: reader with the Memcached servers in the other order"
expect 0 "$tmp/out" -- "$PY" interop/read_cache.py --memcached "$MC_REVERSED" --namespace "$NS"

echo "== interop: Python placement against the keys each Memcached server holds"
expect 0 "$tmp/out" -- "$PY" interop/check_placement.py --memcached "$MC"
grep -q "placement: [0-9]* keys (127.0.0.1:$MP1: [1-9][0-9]*, 127.0.0.1:$MP2: [1-9][0-9]*), 0 misplaced" "$tmp/out" \
  || fail "expected keys on both Memcached servers"

echo "== interop: corrupted entries are named"
mapfile -t names < <(cd "$TEMPLATES" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | head -2)
victim=$(key_of "${names[0]}")
[ "$(redis-cli -p "$RP" SET "$victim" garbage)" = OK ] || fail "redis-cli SET"
expect 1 "$tmp/out" -- "$PY" interop/read_cache.py --redis "127.0.0.1:$RP" --namespace "$NS"
grep -q "^MISMATCH $victim: corrupt record" "$tmp/out" || fail "Redis: $victim not named"
[ "$(grep -c '^MISMATCH' "$tmp/out")" = 1 ] || fail "Redis: expected exactly one mismatch"

# An index entry that disagrees with its (intact) record: a zero hash, not pending.
other=${names[1]}
other_key=$(key_of "$other")
"$PY" - "$RP" "$NS:index" "$other" <<'EOF'
import sys
sys.path.insert(0, "interop")
from read_cache import Redis
port, index, name = sys.argv[1:]
r = Redis(f"127.0.0.1:{port}")
assert r.command("HEXISTS", index, name) == 1, f"{name} not indexed"
r.command("HSET", index, name, bytes(32) + (1).to_bytes(8, "big") + b"\x00")
EOF
expect 1 "$tmp/out" -- "$PY" interop/read_cache.py --redis "127.0.0.1:$RP" --namespace "$NS"
grep -q "^MISMATCH $other_key: index entry '$other' says sha256 0000" "$tmp/out" \
  || fail "Redis: index entry of $other not named"

# Memcached: a raw `set` of garbage on the server that holds the key (found by asking each).
"$PY" - "$MC" "$victim" <<'EOF'
import sys
sys.path.insert(0, "interop")
from read_cache import Memcached
servers, key = sys.argv[1].split(","), sys.argv[2]
holders = [s for s in servers if key in Memcached(s).get_many([key])]
assert len(holders) == 1, f"{key} held by {holders}"
c = Memcached(holders[0])
c.send(f"set {key} 0 0 7\r\ngarbage\r\n".encode())
assert c.line() == b"STORED"
print(f"    {key} overwritten on {holders[0]}")
EOF
expect 1 "$tmp/out" -- "$PY" interop/read_cache.py --memcached "$MC" --namespace "$NS"
grep -q "^MISMATCH $victim: corrupt record" "$tmp/out" || fail "Memcached: $victim not named"
[ "$(grep -c '^MISMATCH' "$tmp/out")" = 1 ] || fail "Memcached: expected exactly one mismatch"

echo "== interop: ok"
