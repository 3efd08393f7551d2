#!/usr/bin/env python3
"""Fails when a package in Cargo.lock needs a newer Rust than the workspace's rust-version.

    cargo metadata --format-version 1 --locked | python3 scripts/msrv_deps.py

Cargo of the workspace's rust-version refuses to build such a package, so `rust-version`
would not be true. The workspace uses resolver 3, which picks compatible versions on
`cargo update`; this check catches a lockfile updated some other way.
"""
import json
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


metadata = json.load(sys.stdin)
members = [p for p in metadata["packages"] if p["id"] in metadata["workspace_members"]]
msrv = max(version(p["rust_version"]) for p in members if p.get("rust_version"))
used = {node["id"] for node in metadata["resolve"]["nodes"]}
too_new = sorted(
    f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
    for p in metadata["packages"]
    if p["id"] in used and p.get("rust_version") and version(p["rust_version"]) > msrv
)
label = ".".join(map(str, msrv))
if too_new:
    print(f"rust-version is {label}, but Cargo.lock has:", *too_new, sep="\n  ")
    print("run `cargo update` (resolver 3 picks versions that fit rust-version)")
    sys.exit(1)
print(f"all {len(used)} packages of Cargo.lock build with Rust {label}")
