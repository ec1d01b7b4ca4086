#!/usr/bin/env bash
# End-to-end benchmark of the `tcache` CLI on a generated tree of N templates (default 100,000).
# Every figure is printed beside its baseline, measured in the same run with public tools, as a
# ratio against the target of docs/performance.md. Medians of RUNS runs (default 5).
#
#   bash benches/e2e.sh                 # N=100000 RUNS=5
#   N=10000 RUNS=3 bash benches/e2e.sh  # quicker
#
# Needs redis-server, redis-benchmark, memcached, python3 and /usr/bin/time; installs the Debian
# packages when run as root. Servers listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail
N=${N:-100000}
RUNS=${RUNS:-5}
SEED=${SEED:-42}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v memcached >/dev/null || need+=(memcached)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (apt-get install ${need[*]})" >&2; exit 2
  fi
fi

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
"$GEN" "$WORK/tree" "$N" "$SEED" >&2
BYTES=$(find "$WORK/tree" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
MEAN=$(( BYTES / N ))
DIR="$WORK/tree"

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile "$WORK/redis.log" --dir "$WORK" &
PIDS+=($!)
MP=$(free_port)
user=(); [ "$(id -u)" = 0 ] && user=(-u root)
memcached -l 127.0.0.1 -p "$MP" -m 4096 "${user[@]}" &
PIDS+=($!)
for _ in $(seq 100); do
  redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1
done
mc() { python3 - "$MP" "$@" <<'PY'
import socket, sys
port, cmd = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
if cmd == "flush":
    s.sendall(b"flush_all\r\n"); assert s.recv(64).startswith(b"OK")
elif cmd == "write":
    # Raw pipelined writes: N sets of the corpus' mean size with noreply, then a no-op to sync.
    n, size = int(sys.argv[3]), int(sys.argv[4])
    value = b"x" * size
    buf = []
    for i in range(n):
        buf.append(b"set raw:%d 0 0 %d noreply\r\n%s\r\n" % (i, size, value))
        if len(buf) == 1000:
            s.sendall(b"".join(buf)); buf = []
    s.sendall(b"".join(buf) + b"mn\r\n")
    got = b""
    while not got.endswith(b"MN\r\n"):
        got += s.recv(65536)
PY
}

now() { date +%s.%N; }
# Reads the whole tree so that it is in the page cache (this kind of machine reclaims cold page
# cache proactively); run before every timed command that reads the files, baselines included.
warm_cache() { tar cf - "$DIR" 2>/dev/null | wc -c >/dev/null; }
# measure NAME SETUP CMD: median wall time of CMD over RUNS runs, SETUP run untimed before each.
measure() {
  local name=$1 setup=$2; shift 2
  local times=()
  for _ in $(seq "$RUNS"); do
    eval "$setup" >/dev/null 2>&1
    local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now)
    times+=("$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.4f", e - s}')")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%s %.4f\n", name, m}'
}

export TCACHE_STATE_DIR="$WORK/state"
R="redis://127.0.0.1:$RP"
M="memcache://127.0.0.1:$MP"
RESULTS="$WORK/results"
echo "== warming the page cache" >&2
tar cf - "$DIR" | wc -c >/dev/null
{
  echo "== baselines" >&2
  measure stat_walk warm_cache find "$DIR" -type f -printf '%s %T@\n'
  measure read_all warm_cache sh -c "tar cf - '$DIR' | wc -c"
  measure redis_write "redis-cli -p $RP FLUSHALL" redis-benchmark -p "$RP" -t set -n "$N" -r "$N" -d "$MEAN" -P 64 -c 1 -q
  measure redis_read : redis-benchmark -p "$RP" -t get -n "$N" -r "$N" -d "$MEAN" -P 64 -c 1 -q
  measure memcached_write "mc flush" mc write "$N" "$MEAN"
  echo "== tcache" >&2
  measure cold_warm_redis "redis-cli -p $RP FLUSHALL; rm -rf $WORK/state; warm_cache" "$T" --backend "$R" warm "$DIR" -q
  measure rescan_redis warm_cache "$T" --backend "$R" warm "$DIR" -q
  measure quick_check_redis warm_cache "$T" --backend "$R" check "$DIR" -q
  measure deep_check_redis warm_cache "$T" --backend "$R" check --deep "$DIR" -q
  measure cold_warm_memcached "mc flush; rm -rf $WORK/state; warm_cache" "$T" --backend "$M" warm "$DIR" -q
  measure rescan_memcached warm_cache "$T" --backend "$M" warm "$DIR" -q
  measure cold_warm_moka "rm -rf $WORK/state; warm_cache" "$T" --backend moka:// warm "$DIR" -q
  measure cold_warm_sled "rm -rf $WORK/state $WORK/sled; warm_cache" "$T" --backend "sled://$WORK/sled" warm "$DIR" -q
} > "$RESULTS"

# Peak memory and write counts, from single runs.
redis-cli -p "$RP" FLUSHALL >/dev/null; rm -rf "$WORK/state"
/usr/bin/time -f '%M' -o "$WORK/rss" "$T" --backend "$R" warm "$DIR" -q >/dev/null
echo "peak_rss_kb $(tail -1 "$WORK/rss")" >> "$RESULTS"
echo "rescan_writes $("$T" --backend "$R" --json warm "$DIR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["written"])')" >> "$RESULTS"
echo "consistent $("$T" --backend "$R" --json check --deep "$DIR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["consistent"])')" >> "$RESULTS"

python3 - "$RESULTS" "$N" "$BYTES" "$RUNS" <<'PY'
import sys
r = {k: float(v) if v.replace('.', '', 1).isdigit() else v for k, v in (l.split() for l in open(sys.argv[1]))}
n, size, runs = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [
    ("cold warm into empty Redis", r["cold_warm_redis"], r["read_all"] + r["redis_write"], "read every file + raw Redis write", 1.5),
    ("cold warm into empty Memcached", r["cold_warm_memcached"], r["read_all"] + r["memcached_write"], "read every file + raw Memcached write", 1.5),
    ("no-change rescan, fresh process (Redis)", r["rescan_redis"], r["stat_walk"], "stat walk", 2.0),
    ("no-change rescan, fresh process (Memcached)", r["rescan_memcached"], r["stat_walk"], "stat walk", 2.0),
    ("quick check, nothing changed (Redis)", r["quick_check_redis"], r["stat_walk"], "stat walk", 3.0),
    ("deep check, nothing changed (Redis)", r["deep_check_redis"], r["read_all"] + r["redis_read"], "read every file + raw Redis read", 2.0),
    ("cold warm into moka", r["cold_warm_moka"], r["read_all"], "read every file", 3.0),
    ("cold warm into sled", r["cold_warm_sled"], r["read_all"], "read every file", 3.0),
]
print(f"\n{n} templates, {size / 1e6:.1f} MB, medians of {runs} runs\n")
print("| figure | tcache (s) | baseline (s) | baseline | ratio | target | met |")
print("| --- | ---: | ---: | --- | ---: | ---: | :---: |")
ok = True
for name, ours, base, what, target in rows:
    ratio = ours / base
    ok &= ratio <= target
    print(f"| {name} | {ours:.3f} | {base:.3f} | {what} | {ratio:.2f} | ≤ {target} | {'yes' if ratio <= target else 'NO'} |")
rss_mb = float(r["peak_rss_kb"]) / 1024
ok &= rss_mb <= 150 and int(r["rescan_writes"]) == 0
print(f"| peak memory, cold warm into Redis | {rss_mb:.0f} MB | | | | ≤ 150 MB | {'yes' if rss_mb <= 150 else 'NO'} |")
print(f"| template writes in the no-change rescan | {int(r['rescan_writes'])} | | | | 0 | {'yes' if int(r['rescan_writes']) == 0 else 'NO'} |")
print(f"\nbaselines: stat walk {r['stat_walk']:.3f} s, read every file {r['read_all']:.3f} s, "
      f"raw Redis write {r['redis_write']:.3f} s, raw Redis read {r['redis_read']:.3f} s, raw Memcached write {r['memcached_write']:.3f} s; "
      f"deep check after the runs consistent: {r['consistent']}")
sys.exit(0 if ok else 1)
PY
