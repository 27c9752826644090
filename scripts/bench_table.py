#!/usr/bin/env python3
"""Turns bench-results/*.json (from scripts/bench.sh) into a markdown table of medians.

usage: bench_table.py DIR REPEATS "a b c d e"
"""
import json
import statistics
import sys
from pathlib import Path

NAMES = {
    "a": "a. fan-out: 1 room, 1 publisher, 2,000 subscribers, 128 B",
    "b": "b. many rooms: 1,000 rooms x 5 subscribers, 100 publishers, 128 B",
    "c": "c. latency at a steady 10,000 deliveries/s",
    "d": "d. idle: 15,000 connections on one node",
    "e": "e. connect storm: 10,000 clients connect and join",
}
PAIRS = [("rc1", "nats1"), ("rc3", "nats3")]
LABEL = {"rc1": "roomcast 1 node", "rc3": "roomcast 3 nodes",
         "nats1": "nats-server 1 node", "nats3": "nats-server 3 nodes"}


def load(d, s, t, repeats):
    runs = []
    for r in range(1, repeats + 1):
        p = Path(d) / f"{s}-{t}-{r}.json"
        if p.exists() and p.stat().st_size > 0:
            try:
                runs.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                pass
    cmd = (Path(d) / f"{s}-{t}-1.cmd")
    return runs, cmd.read_text().strip() if cmd.exists() else ""


def med(runs, f):
    vals = [f(r) for r in runs if f(r) is not None]
    return statistics.median(vals) if vals else None


def metrics(s):
    if s in ("a", "b"):
        return [("deliveries/s", lambda r: r["deliveries_per_s"], True, "{:,.0f}"),
                ("deliveries per server core-s", lambda r: r.get("deliveries_per_server_cpu_s"), True, "{:,.0f}"),
                ("publishes/s", lambda r: r["publishes_per_s"], True, "{:,.0f}"),
                ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, False, "{:,.2f}")]
    if s == "c":
        return [("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, False, "{:,.2f}"),
                ("p50 latency ms", lambda r: r["latency"]["p50_us"] / 1000, False, "{:,.2f}"),
                ("deliveries/s", lambda r: r["deliveries_per_s"], True, "{:,.0f}")]
    if s == "d":
        return [("RSS per connection KiB",
                 lambda r: r["rss_bytes_per_conn"] / 1024 if r.get("rss_bytes_per_conn") is not None else None,
                 False, "{:,.1f}"),
                ("connect+join s", lambda r: r["connect_s"], False, "{:,.2f}")]
    return [("connect+join s", lambda r: r["connect_s"], False, "{:,.2f}")]


def fmt(v, f):
    return "—" if v is None else f.format(v)


def main():
    d, repeats, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
    print(f"Medians of {repeats} runs per row; ratio = roomcast / nats-server "
          "(for rates higher is better, for latency, memory and time lower is better).\n")
    cmds = []
    for s in scenarios:
        print(f"### {NAMES.get(s, s)}\n")
        print("| metric | system | roomcast | nats-server | ratio |")
        print("|---|---|---:|---:|---:|")
        for mname, f, _higher, ff in metrics(s):
            for rc, nats in PAIRS:
                rruns, rcmd = load(d, s, rc, repeats)
                nruns, ncmd = load(d, s, nats, repeats)
                if not rruns and not nruns:
                    continue
                a, b = med(rruns, f), med(nruns, f)
                ratio = f"{a / b:.2f}x" if a is not None and b not in (None, 0) else "—"
                print(f"| {mname} | {LABEL[rc].split(' ', 1)[1]} | {fmt(a, ff)} | {fmt(b, ff)} | {ratio} |")
                for t, c in ((rc, rcmd), (nats, ncmd)):
                    if c:
                        cmds.append((s, t, c))
        if s == "a":
            one, _ = load(d, "a", "rc1", repeats)
            three, _ = load(d, "a", "rc3", repeats)
            x, y = med(one, lambda r: r["deliveries_per_s"]), med(three, lambda r: r["deliveries_per_s"])
            if x and y:
                print(f"\nroomcast 3 nodes / 1 node on (a): **{y / x:.2f}x** deliveries/s")
        bad = []
        for t in ("rc1", "rc3", "nats1", "nats3"):
            runs, _ = load(d, s, t, repeats)
            for r in runs:
                if r["lost"] or r["duplicated"] or r["reordered"] or r["gaps"]:
                    bad.append(f"{t}: lost {r['lost']} dup {r['duplicated']} reordered {r['reordered']} gaps {r['gaps']}")
        print("\nchecks: " + ("; ".join(bad) if bad else "no message lost, duplicated or reordered in any run") + "\n")
    print("### Command lines\n")
    seen = set()
    for s, t, c in cmds:
        if (s, t) in seen:
            continue
        seen.add((s, t))
        print(f"- `{s}/{t}`: `{c}`")


if __name__ == "__main__":
    main()
