#!/usr/bin/env python3
"""Median of several benches/compare.sh runs, per scenario and server.

    python3 benches/median.py OUT_DIR [OUT_DIR ...]

Each OUT_DIR is one compare.sh run (its OUT); the servers and scenarios are read from the
JSON files there. Rounds of one run are comparable with each other, so the median of a
few rounds of "herald" next to "baseline" (SERVERS="herald baseline", HERALD_BASELINE=...)
is the fairest before/after figure on a noisy machine. Runs of "before", the baseline's
older name, count as "baseline".

The cluster scenarios (fa, fc: two nodes and Redis) take their CPU per delivery from the
`herald-SC.cluster` file compare.sh writes beside the JSON (both nodes' CPU over all
deliveries), and get a table of their own: Redis's cost, the publish-to-echo time, the
redis-benchmark ceiling, and issue 12's ratios taken within each round.
"""
import json
import os
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def figures(r, cluster=None):
    lat, srv = r.get("latency") or {}, r.get("server") or {}
    if cluster is not None:
        # Both nodes' CPU over all deliveries; node 1's memory alone would mislead.
        srv = {"cpu_ns_per_delivery": cluster.get("nodes_ns")}
    return {
        "deliveries/s": r.get("deliveries_per_sec"),
        "p50 ms": lat.get("p50_ms"),
        "p99 ms": lat.get("p99_ms"),
        # p90/p10 of the clients' own median latencies.
        "p50 spread": (r.get("client_p50_spread") or {}).get("p90_p10"),
        "CPU ns/deliv": srv.get("cpu_ns_per_delivery"),
        # The server's socket writes per delivery, when its /metrics counts them.
        "writes/deliv": srv.get("writes_per_delivery"),
        "KiB/conn": (srv.get("bytes_per_connection") or 0) / 1024 or None,
        "lost": r.get("lost"),
    }


def server_and_scenario(json_name):
    """`herald-a.json` as ("herald", "a"); the baseline's older name "before" as "baseline"."""
    server, _, sc = json_name[:-5].rpartition("-")
    return ("baseline" if server == "before" else server), sc


def cluster_round(d, here, clusters):
    """One round's (f) figures, and issue 12's ratios against (a) and (c) of the same round."""
    for sc, single in (("fa", "a"), ("fc", "c")):
        c = load(os.path.join(d, f"herald-{sc}.cluster"))
        if c is None:
            continue
        echo = c.get("echo") or [None] * 4
        f, s = here.get((sc, "herald")) or {}, here.get((single, "herald")) or {}
        row = {
            "node1 ns": (c.get("node_ns") or [None])[0],
            "node2 ns": (c.get("node_ns") or [None, None])[1],
            "nodes ns": c.get("nodes_ns"),
            "writes/deliv (run)": c.get("writes_per_delivery"),
            "redis ns/deliv": c.get("redis_ns"),
            "redis us/msg": c.get("redis_us_msg"),
            "echo p50 ms": None if echo[0] is None else echo[0] * 1e3,
            "echo p99 ms": None if echo[1] is None else echo[1] * 1e3,
            "echo mean ms": None if echo[2] is None else echo[2] * 1e3,
            "ceiling msg/s": c.get("ceiling"),
            f"nodes / ({single})": (c["nodes_ns"] / s["CPU ns/deliv"]
                                    if c.get("nodes_ns") and s.get("CPU ns/deliv") else None),
        }
        if sc == "fc" and f.get("p50 ms") is not None and s.get("p50 ms") is not None:
            row["p50 - (c) ms"] = f["p50 ms"] - s["p50 ms"]
        clusters.setdefault(sc, []).append(row)


def print_clusters(clusters):
    if not clusters:
        return
    print()
    print("(f), median of the rounds (ratios and differences taken within each round; "
          "every round's value in brackets):")
    for sc in sorted(clusters):
        parts = []
        for k in clusters[sc][0]:
            vals = [r[k] for r in clusters[sc] if r.get(k) is not None]
            if not vals:
                continue
            spec = "{:,.0f}" if k.endswith(("ns", "ns/deliv", "msg/s")) else "{:.2f}"
            spec = "{:.4f}" if k.startswith("writes") else spec
            each = ", ".join(spec.format(v) for v in vals)
            parts.append(f"{k} {spec.format(statistics.median(vals))} ({each})")
        print(f"  {sc}: " + "; ".join(parts))


def main(dirs):
    runs = {}
    ratios = {}
    clusters = {}
    for d in dirs:
        here = {}
        for name in os.listdir(d):
            if name.endswith(".json"):
                server, sc = server_and_scenario(name)
                r = load(os.path.join(d, name))
                if r is not None:
                    here[(sc, server)] = figures(r, load(os.path.join(d, name[:-5] + ".cluster")))
        # herald over the baseline within this round: the ratio the noise cancels in.
        for (sc, server), f in here.items():
            b = here.get((sc, "baseline"))
            if server != "herald" or b is None:
                continue
            for c, better_high in (("deliveries/s", True), ("CPU ns/deliv", False),
                                   ("p50 ms", False), ("p99 ms", False), ("KiB/conn", False)):
                if f[c] and b[c]:
                    ratio = f[c] / b[c] if better_high else b[c] / f[c]
                    ratios.setdefault((sc, c), []).append(ratio)
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            server, sc = server_and_scenario(name)
            r = load(os.path.join(d, name))
            if r is not None:
                runs.setdefault((sc, server), []).append(
                    figures(r, load(os.path.join(d, name[:-5] + ".cluster"))))
        cluster_round(d, here, clusters)
    cols = ["deliveries/s", "p50 ms", "p99 ms", "p50 spread", "CPU ns/deliv", "writes/deliv",
            "KiB/conn", "lost"]
    print(f"median of {len(dirs)} rounds")
    print("| scenario | server | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (sc, server) in sorted(runs):
        cells = []
        for c in cols:
            vals = [f[c] for f in runs[(sc, server)] if f[c] is not None]
            if not vals:
                cells.append("-")
            elif c == "lost":
                cells.append(str(max(vals)) + " (max)")
            elif c in ("p50 ms", "p99 ms", "KiB/conn"):
                cells.append(f"{statistics.median(vals):.2f}")
            elif c == "p50 spread":
                cells.append(f"{statistics.median(vals):.2f}x")
            elif c == "writes/deliv":
                cells.append(f"{statistics.median(vals):.4f}")
            else:
                cells.append(f"{statistics.median(vals):,.0f}")
        print(f"| {sc} | {server} | " + " | ".join(cells) + " |")
    if ratios:
        print()
        print("herald against the baseline, median of the per-round ratios (above 1 favours herald):")
        for sc in sorted({sc for sc, _ in ratios}):
            parts = [f"{c} {statistics.median(v):.2f}x ({', '.join(f'{x:.2f}' for x in v)})"
                     for (s2, c), v in sorted(ratios.items()) if s2 == sc]
            print(f"  {sc}: " + "; ".join(parts))
    print_clusters(clusters)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
