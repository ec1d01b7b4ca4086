#!/usr/bin/env python3
"""Checks the rendezvous placement of read_cache.py against what the Rust client did.

Asks every Memcached server which keys it holds (`lru_crawler metadump all`), then checks that
each key is on exactly one server and that it is the server read_cache.server_for picks.

    python3 interop/check_placement.py --memcached HOST:PORT,HOST:PORT [--vectors N]

--vectors N prints N (servers, key, server) triples per server as Python literals, the form of
read_cache.RENDEZVOUS_VECTORS. Exit status 0 when every key is where Python expects it.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from read_cache import Memcached, server_for  # noqa: E402


def keys_held(addr: str) -> list[str]:
    c = Memcached(addr)
    c.send(b"lru_crawler metadump all\r\n")
    # One `key=<url-encoded key> exp=… …` line per item, ending in "\n" only; then "END\r\n".
    while not (c.buf == b"END\r\n" or c.buf.endswith(b"\nEND\r\n") or c.buf.endswith(b"ERROR\r\n")):
        c._fill()
    text = bytes(c.buf)
    if not text.endswith(b"END\r\n"):
        raise SystemExit(f"{addr}: metadump refused: {text[-200:].decode(errors='replace')}")
    keys = []
    for line in text.split(b"\n"):
        first = line.split(b" ", 1)[0]
        if first.startswith(b"key="):
            keys.append(urllib.parse.unquote(first[4:].decode()))
    return keys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memcached", required=True, metavar="HOST:PORT,HOST:PORT...")
    p.add_argument("--vectors", type=int, default=0)
    a = p.parse_args()
    servers = [s for s in a.memcached.split(",") if s]
    held = {s: keys_held(s) for s in servers}
    where: dict[str, list[str]] = {}
    for s, keys in held.items():
        for k in keys:
            where.setdefault(k, []).append(s)
    bad = 0
    for k, on in sorted(where.items()):
        expected = server_for(k, servers)
        if on != [expected]:
            bad += 1
            print(f"PLACEMENT {k}: held by {on}, Python places it on {expected}")
    counts = ", ".join(f"{s}: {len(held[s])}" for s in servers)
    print(f"placement: {len(where)} keys ({counts}), {bad} misplaced")
    if a.vectors:
        for s in servers:
            for k in sorted(held[s])[: a.vectors]:
                print(f"    ({servers!r}, {k!r}, {s!r}),")
    return 1 if bad or not where else 0


if __name__ == "__main__":
    sys.exit(main())
