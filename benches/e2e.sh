#!/usr/bin/env bash
# End-to-end benchmark of the `tcache` CLI on a generated tree of N templates (default 100,000),
# laid out as SHAPE: `nested` (37 apps x 271 sections, default) or `wide` (directories of 1,000
# files). Every figure is printed beside its baseline, measured in the same run with public
# tools, as a ratio against the targets of docs/performance.md, with each command's peak RSS.
# Medians of RUNS runs (default 5).
#
#   bash benches/e2e.sh                       # N=100000 SHAPE=nested RUNS=5
#   bash benches/e2e.sh 1000000 wide          # N and SHAPE as arguments
#   N=10000 RUNS=3 bash benches/e2e.sh        # or from the environment
#   BACKENDS=redis RUNS=3 bash benches/e2e.sh 1000000 wide   # only some backends
#
# Needs redis-server, redis-benchmark, memcached, python3 and /usr/bin/time; installs the Debian
# packages when run as root. Servers listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail
N=${1:-${N:-100000}}
SHAPE=${2:-${SHAPE:-nested}}
RUNS=${RUNS:-5}
case "$SHAPE" in nested|wide) ;; *) echo "SHAPE must be nested or wide, not $SHAPE" >&2; exit 2 ;; esac
SEED=${SEED:-42}
BACKENDS=${BACKENDS:-redis memcached sled moka}
for b in $BACKENDS; do
  case "$b" in redis|memcached|sled|moka) ;; *) echo "BACKENDS: unknown backend $b (redis, memcached, sled, moka)" >&2; exit 2 ;; esac
done
has() { case " $BACKENDS " in *" $1 "*) return 0 ;; esac; return 1; }
has redis || { echo "BACKENDS must include redis: the targets and their baselines are Redis's" >&2; exit 2; }
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

echo "== generating $N templates ($SHAPE)" >&2
"$GEN" "$WORK/tree" "$N" "$SEED" "$SHAPE" >&2
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
# Also records the largest peak RSS of CMD over the runs as NAME_rss_kb.
measure() {
  local name=$1 setup=$2; shift 2
  local times=() rss=0
  for _ in $(seq "$RUNS"); do
    eval "$setup" >/dev/null 2>&1
    local s e; s=$(now)
    if declare -F "$1" >/dev/null; then
      "$@" >/dev/null 2>&1; echo 0 > "$WORK/rss.one"   # a shell function: no process to measure
    else
      /usr/bin/time -f '%M' -o "$WORK/rss.one" "$@" >/dev/null 2>&1
    fi
    e=$(now)
    times+=("$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.4f", e - s}')")
    local r; r=$(tail -1 "$WORK/rss.one")
    if [ "$r" -gt "$rss" ]; then rss=$r; fi
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%s %.4f\n", name, m}'
  echo "${name}_rss_kb $rss"
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
  if has memcached; then measure memcached_write "mc flush" mc write "$N" "$MEAN"; fi
  echo "== tcache" >&2
  for b in redis memcached sled; do
    has "$b" || continue
    case $b in
      redis) U=$R; FLUSH="redis-cli -p $RP FLUSHALL" ;;
      memcached) U=$M; FLUSH="mc flush" ;;
      sled) U="sled://$WORK/sled"; FLUSH="rm -rf $WORK/sled" ;;
    esac
    measure "cold_warm_$b" "$FLUSH; rm -rf $WORK/state; warm_cache" "$T" --backend "$U" warm "$DIR" -q
    measure "rescan_$b" warm_cache "$T" --backend "$U" warm "$DIR" -q
    measure "quick_check_$b" warm_cache "$T" --backend "$U" check "$DIR" -q
    measure "deep_check_$b" warm_cache "$T" --backend "$U" check --deep "$DIR" -q
  done
  # moka lives in the process: only a cold warm means anything.
  if has moka; then
    measure cold_warm_moka "rm -rf $WORK/state; warm_cache" "$T" --backend moka:// warm "$DIR" -q
  fi
} > "$RESULTS"

# Writes of a no-change rescan, and a deep check after everything.
echo "rescan_writes $("$T" --backend "$R" --json warm "$DIR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["written"])')" >> "$RESULTS"
echo "consistent $("$T" --backend "$R" --json check --deep "$DIR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["consistent"])')" >> "$RESULTS"

python3 - "$RESULTS" "$N" "$BYTES" "$RUNS" "$SHAPE" "$BACKENDS" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    try:
        r[k] = float(v)
    except ValueError:
        r[k] = v
n, size, runs, shape = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rss_cap = 64 if n <= 100_000 else 256
backends = sys.argv[6].split()
write = {"redis": r["redis_write"], "memcached": r.get("memcached_write", 0.0), "sled": 0.0}
rows = []  # (figure, seconds, baseline seconds, baseline, target ratio or None, rss key)
for b in [b for b in ["redis", "memcached", "sled"] if b in backends]:
    target = b == "redis"
    rows += [
        (f"cold warm ({b})", r[f"cold_warm_{b}"], r["read_all"] + write[b], "read all" + (f" + raw {b} write" if write[b] else ""), 1.0 if target else None, f"cold_warm_{b}"),
        (f"rescan, nothing changed ({b})", r[f"rescan_{b}"], r["stat_walk"], "stat walk", 1.5 if target else None, f"rescan_{b}"),
        (f"quick check ({b})", r[f"quick_check_{b}"], r["stat_walk"], "stat walk", 2.0 if target else None, f"quick_check_{b}"),
        (f"deep check ({b})", r[f"deep_check_{b}"], r["read_all"] + (r["redis_read"] if b == "redis" else 0.0), "read all" + (" + raw Redis read" if b == "redis" else ""), 1.2 if target else None, f"deep_check_{b}"),
    ]
if "moka" in backends:
    rows.append(("cold warm (moka)", r["cold_warm_moka"], r["read_all"], "read all", None, "cold_warm_moka"))
print(f"\n{n} templates ({shape} tree), {size / 1e6:.1f} MB, medians of {runs} runs\n")
print("| figure | tcache (s) | µs per template | baseline (s) | baseline | ratio | target | peak RSS | met |")
print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | :---: |")
ok = True
for name, ours, base, what, target, rk in rows:
    ratio = ours / base if base else float("nan")
    rss = r[rk + "_rss_kb"] / 1024
    met_time = target is None or ratio <= target
    met_rss = rss <= rss_cap
    met = met_time and met_rss
    if target is not None or rk.endswith("redis"):
        ok &= met
    shown_target = f"≤ {target}" if target else ""
    print(f"| {name} | {ours:.3f} | {ours / n * 1e6:.1f} | {base:.3f} | {what} | {ratio:.2f} | {shown_target} | {rss:.0f} MB (≤ {rss_cap}) | {'yes' if met else 'NO'} |")
writes = int(r["rescan_writes"])
ok &= writes == 0
print(f"| template writes in the no-change rescan | {writes} | | | | | 0 | | {'yes' if writes == 0 else 'NO'} |")
print(f"\nbaselines: stat walk {r['stat_walk']:.3f} s, read all {r['read_all']:.3f} s, "
      f"raw Redis write {r['redis_write']:.3f} s, raw Redis read {r['redis_read']:.3f} s, raw Memcached write {r.get('memcached_write', float('nan')):.3f} s; "
      f"deep check after the runs consistent: {r['consistent']}")
sys.exit(0 if ok else 1)
PY
