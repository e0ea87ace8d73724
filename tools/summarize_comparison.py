#!/usr/bin/env python3
"""Prints the Markdown table of tools/compare-buildgrid from its results.jsonl."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
headline = [  # (row, scenario, concurrency or None for any, field, unit)
    ("fmb-present", "fmb-present", None, "itemsPerSecond", "digests/s"),
    ("fmb-missing", "fmb-missing", None, "itemsPerSecond", "digests/s"),
    ("batch-update", "batch-update", None, "itemsPerSecond", "blobs/s"),
    ("batch-read", "batch-read", None, "itemsPerSecond", "blobs/s"),
    ("bytestream-write", "bytestream-write", None, "megabytesPerSecond", "MB/s"),
    ("bytestream-read", "bytestream-read", None, "megabytesPerSecond", "MB/s"),
    ("ac", "ac", 4, "operationsPerSecond", "pairs/s"),
    ("ac, 16 at once", "ac", 16, "operationsPerSecond", "pairs/s"),
    ("rpc-floor", "rpc-floor", None, "operationsPerSecond", "calls/s"),
    ("bazel-mix", "bazel-mix", None, "operationsPerSecond", "steps/s"),
]

def value(result):
    if "failed" in result:
        return None
    seconds = result["seconds"]
    ops = result["operations"]
    return {
        "itemsPerSecond": ops * result["itemsPerOperation"] / seconds,
        "megabytesPerSecond": result["payloadBytes"] / seconds / 1e6,
        "operationsPerSecond": ops / seconds,
    }


def fmt(x):
    return "failed" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


for backend in ("lru", "disk"):
    print(f"\n### {backend} storage\n")
    print("| scenario | unit | BuildGrid | Strata | Strata/BuildGrid | Strata p50 / p99 ms | BuildGrid p50 / p99 ms "
          "| server CPU per op, BuildGrid / Strata µs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, scenario, concurrency, field, unit in headline:
        found = {}
        for row in rows:
            result = row.get("result", {})
            if row.get("backend") == backend and not row.get("large") and result.get("scenario") == scenario \
                    and (concurrency is None or result.get("options", {}).get("concurrency", concurrency) == concurrency):
                found[row["server"]] = result
        bg, st = found.get("buildgrid"), found.get("strata")
        bgv = value(bg)[field] if bg and value(bg) else None
        stv = value(st)[field] if st and value(st) else None
        ratio = f"{stv / bgv:.1f}×" if bgv and stv else "-"
        lat = lambda r: f"{r['p50Milliseconds']:.2f} / {r['p99Milliseconds']:.2f}" if r and "failed" not in r else "-"
        # The servers share the machine with the load generator: CPU per operation is each server's own cost.
        cpu = lambda r: f"{r['serverCPUSeconds'] / r['operations'] * 1e6:,.0f}" \
            if r and "failed" not in r and r.get("serverCPUSeconds") and r["operations"] else "-"
        print(f"| {label} | {unit} | {fmt(bgv)} | {fmt(stv)} | {ratio} | {lat(st)} | {lat(bg)} | {cpu(bg)} / {cpu(st)} |")
    for row in rows:
        if row.get("backend") == backend and "startup_ms" in row:
            print(f"\n{row['server']}: start-up to listening {row['startup_ms']} ms, idle RSS {row['idle_rss_bytes'] / 2**20:.0f} MiB", end="")
    print()

for row in rows:
    if row.get("large"):
        r = row["result"]
        growth = (r["serverPeakRSSBytes"] - r["serverRSSBeforeBytes"]) / 2**20
        print(f"\nStrata disk, 4 GiB {r['scenario']}: {r['payloadBytes'] / r['seconds'] / 1e6:,.0f} MB/s, "
              f"server peak RSS {r['serverPeakRSSBytes'] / 2**20:.0f} MiB ({growth:+.0f} MiB over its RSS before)")
