#!/usr/bin/env python3
"""Prints the Markdown table of tools/compare-buildgrid from its results.jsonl."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
headline = {  # scenario -> (field, unit)
    "fmb-present": ("itemsPerSecond", "digests/s"),
    "fmb-missing": ("itemsPerSecond", "digests/s"),
    "batch-update": ("itemsPerSecond", "blobs/s"),
    "batch-read": ("itemsPerSecond", "blobs/s"),
    "bytestream-write": ("megabytesPerSecond", "MB/s"),
    "bytestream-read": ("megabytesPerSecond", "MB/s"),
    "ac": ("operationsPerSecond", "pairs/s"),
    "bazel-mix": ("operationsPerSecond", "steps/s"),
}


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
    print("| scenario | unit | BuildGrid | Strata | Strata/BuildGrid | Strata p50 / p99 ms | BuildGrid p50 / p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for scenario, (field, unit) in headline.items():
        found = {}
        for row in rows:
            if row.get("backend") == backend and "result" in row and not row.get("large") \
                    and row["result"].get("scenario") == scenario:
                found[row["server"]] = row["result"]
        bg, st = found.get("buildgrid"), found.get("strata")
        bgv = value(bg)[field] if bg and value(bg) else None
        stv = value(st)[field] if st and value(st) else None
        ratio = f"{stv / bgv:.1f}×" if bgv and stv else "-"
        lat = lambda r: f"{r['p50Milliseconds']:.2f} / {r['p99Milliseconds']:.2f}" if r and "failed" not in r else "-"
        print(f"| {scenario} | {unit} | {fmt(bgv)} | {fmt(stv)} | {ratio} | {lat(st)} | {lat(bg)} |")
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
