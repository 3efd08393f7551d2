#!/usr/bin/env python3
"""Medians of bench-results/*.json (Worlds shape) and eventfold's ratios against the peers."""
import glob
import json
import os
import statistics
import sys

KEYS = [
    ("commands_per_s", "cmds/s"), ("cmd_p50_ms", "p50 ms"), ("cmd_p99_ms", "p99 ms"),
    ("gets_per_s", "gets/s"), ("creates_per_s", "creates/s"),
    ("raw_app_events_per_s", "raw_app ev/s"), ("raw_store_events_per_s", "raw_store ev/s"),
    ("raw_single_events_per_s", "raw_single ev/s"), ("read_mismatches", "mismatches (max)"),
    ("bare_commits_per_s", "bare commits/s (same run)"), ("commands_vs_bare", "cmds / bare"),
    ("read_then_commit_per_s", "read+commit/s (same run)"),
    ("commands_vs_read_then_commit", "cmds / read+commit"),
    ("interleaved_read_then_commit_vs_bare", "read+commit / bare, per op interleaved"),
    ("interleaved_command_vs_read_then_commit", "cmds / read+commit, per op interleaved"),
]
# A bound, not a result: the read+commit loop is the least any store that loads before it
# records must do, so its rate over a peer's is the most such a store could reach.
BOUNDS = [  # ours, our key, peer, peer key
    ("eventfold-postgres", "read_then_commit_per_s", "cqrs-es-postgres", "commands_per_s"),
    ("eventfold-postgres", "read_then_commit_per_s", "postgres", "commands_per_s"),
]
RATIOS = [  # ours, peer, what
    ("eventfold-memory", "cqrs-es-mem", "commands_per_s"),
    ("eventfold-memory", "popo", "commands_per_s"),
    ("eventfold-sqlite", "sqlite", "commands_per_s"),
    ("eventfold-sqlite", "sqlite", "raw_store_events_per_s"),
    ("eventfold-postgres", "postgres", "commands_per_s"),
    ("eventfold-postgres", "cqrs-es-postgres", "commands_per_s"),
    ("eventfold-postgres-cached-single-writer", "cqrs-es-postgres", "commands_per_s"),
    ("eventfold-postgres-cached-single-writer", "postgres", "commands_per_s"),
    ("eventfold-postgres", "postgres", "raw_store_events_per_s"),
    ("eventfold-postgres", "cqrs-es-postgres", "raw_store_events_per_s"),
]


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def main(folder: str) -> None:
    runs: dict[str, list[dict]] = {}
    extra: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            try:
                doc = json.loads(f.read())
            except json.JSONDecodeError:
                continue
        results = doc.get("results")
        is_worlds = isinstance(results, dict) and all(isinstance(r, dict) for r in results.values())
        if is_worlds and doc.get("bench") != "eventfold_pg_writers":
            for backend, res in doc["results"].items():
                if "error" not in res:
                    runs.setdefault(backend, []).append(res)
        else:
            extra.setdefault(doc.get("bench", path), []).append(doc)

    def med(backend: str, key: str):
        vals = [r[key] for r in runs.get(backend, []) if isinstance(r.get(key), (int, float))]
        if not vals:
            return None
        return max(vals) if key == "read_mismatches" else statistics.median(vals)

    print("| backend | runs | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    for backend in sorted(runs):
        cells = []
        for key, _ in KEYS:
            v = med(backend, key)
            cells.append("-" if v is None else fmt(v))
        print(f"| {backend} | {len(runs[backend])} | " + " | ".join(cells) + " |")
    print()
    for ours, peer, key in RATIOS:
        a, b = med(ours, key), med(peer, key)
        if a and b:
            print(f"{ours} / {peer} {key}: {fmt(a)} / {fmt(b)} = {a / b:.2f}x")
    for ours, our_key, peer, peer_key in BOUNDS:
        a, b = med(ours, our_key), med(peer, peer_key)
        if a and b:
            print(f"bound: {ours} {our_key} / {peer} {peer_key}: {fmt(a)} / {fmt(b)} = {a / b:.2f}x")
    for backend in sorted(runs):
        per_op = [r["interleaved_p50_us"] for r in runs[backend] if "interleaved_p50_us" in r]
        if per_op:
            cells = ", ".join(
                f"{what} {statistics.median(p[what] for p in per_op):.0f} us"
                for what in ("bare_commit", "read_then_commit", "command"))
            print(f"{backend}, interleaved p50 per op (median of {len(per_op)} runs): {cells}")
    out = {"ratios": {f"{o}/{p}/{k}": (med(o, k) / med(p, k)) for o, p, k in RATIOS if med(o, k) and med(p, k)}}
    for name, docs in extra.items():
        print(f"\n{name}: {len(docs)} runs; last: {json.dumps(docs[-1].get('results', docs[-1]))}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
