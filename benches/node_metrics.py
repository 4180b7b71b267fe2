#!/usr/bin/env python3
"""Each herald node's own /metrics when several nodes share one port (--reuse-port).

    node_metrics.py ready PORT PID...
        wait (up to 15 s) until every PID listens on 127.0.0.1:PORT and says
        herald_bus_up 1; exit status 1 if one never does.
    node_metrics.py split PORT CLIENTS OUT.json PID...
        while the clients connect, read each node's herald_websockets_open until the nodes'
        latest figures add up to CLIENTS (at most 90 s), then stop asking, so the measured
        window is left alone; write the most each node had open to OUT.json.
    node_metrics.py final PORT SPLIT.json OUT.json PID...
        read each node's page once more (after the run, before the nodes stop) and write
        OUT.json: per node, the split, its upgrades, deliveries, bus counters and the
        herald_bus_echo_seconds buckets (cumulative since the node started).

The kernel hands each new connection on the shared port to one of the nodes, chosen by a
hash of its addresses, so a request cannot name its node. Each page is read on its own
keep-alive connection instead, and the node that answered is found by the socket's inode:
the server end of the connection (in /proc/net/tcp) is one of that PID's open files. A
connection that reached a node already read is closed and another one is tried.
"""
import json
import os
import re
import socket
import sys
import time


def fetch_page(port):
    """(pid of the node that answered, its /metrics text)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed before the headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if not m:
            raise OSError("no Content-Length")
        while len(body) < int(m.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed inside the body")
            body += chunk
        # The node still holds its end: find whose file it is.
        return owner(port, s.getsockname()[1]), body.decode()
    finally:
        s.close()


PIDS = []


def owner(port, client_port):
    want = f"0100007F:{port:04X} 0100007F:{client_port:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 9 and f"{fields[1]} {fields[2]}" == want:
                inode = fields[9]
                break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in PIDS:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    pass
        except OSError:
            pass
    return None


def pages(port, tries=64):
    """{pid: page} for every node, each read once."""
    got = {}
    for _ in range(tries):
        if len(got) == len(PIDS):
            break
        pid, page = fetch_page(port)
        if pid is not None and pid not in got:
            got[pid] = page
    return got


def value(page, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", page, re.M)
    return float(m.group(1)) if m else None


def echo_buckets(page):
    out = []
    for le, n in re.findall(r'^herald_bus_echo_seconds_bucket\{le="([^"]+)"\} (\S+)$', page, re.M):
        out.append([float("inf") if le == "+Inf" else float(le), float(n)])
    return sorted(out)


def listening(port, pid):
    """Whether PID holds a listening socket on PORT (state 0A in /proc/net/tcp)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 9 and fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def ready(port):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(listening(port, p) for p in PIDS):
            got = pages(port)
            if len(got) == len(PIDS) and all(value(p, "herald_bus_up") == 1 for p in got.values()):
                return 0
        time.sleep(0.1)
    print(f"node_metrics: not every node of {PIDS} listens on {port} with its bus up",
          file=sys.stderr)
    return 1


def split(port, clients, out):
    seen = {p: 0 for p in PIDS}
    latest = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for pid, page in pages(port).items():
            n = int(value(page, "herald_websockets_open") or 0)
            latest[pid] = n
            seen[pid] = max(seen[pid], n)
        if len(latest) == len(PIDS) and sum(latest.values()) >= clients:
            break
        time.sleep(0.2)
    with open(out, "w") as f:
        json.dump({str(p): n for p, n in seen.items()}, f)
    return 0


def final(port, split_file, out):
    try:
        with open(split_file) as f:
            seen = json.load(f)
    except (OSError, ValueError):
        seen = {}
    got = pages(port)
    nodes = []
    for pid in PIDS:
        page = got.get(pid, "")
        nodes.append({
            "pid": pid,
            "websockets_open_max": seen.get(str(pid)),
            "upgrades": value(page, "herald_upgrades_total"),
            "deliveries": value(page, "herald_deliveries_total"),
            "writes": value(page, "herald_frames_per_write_count"),
            "bus_up": value(page, "herald_bus_up"),
            "bus_publishes": value(page, "herald_bus_publishes_total"),
            "bus_received": value(page, "herald_bus_received_total"),
            "bus_sent_bytes": value(page, "herald_bus_sent_bytes_total"),
            "bus_received_bytes": value(page, "herald_bus_received_bytes_total"),
            "bus_gaps": value(page, "herald_bus_gaps_total"),
            "bus_undelivered": value(page, "herald_bus_undelivered_total"),
            "echo_count": value(page, "herald_bus_echo_seconds_count"),
            "echo_sum": value(page, "herald_bus_echo_seconds_sum"),
            "echo_buckets": echo_buckets(page),
        })
    with open(out, "w") as f:
        json.dump({"nodes": nodes}, f)
    return 0 if len(got) == len(PIDS) else 1


def main(argv):
    if len(argv) >= 3 and argv[0] == "ready":
        PIDS.extend(int(p) for p in argv[2:])
        return ready(int(argv[1]))
    if len(argv) >= 5 and argv[0] == "split":
        PIDS.extend(int(p) for p in argv[4:])
        return split(int(argv[1]), int(argv[2]), argv[3])
    if len(argv) >= 5 and argv[0] == "final":
        PIDS.extend(int(p) for p in argv[4:])
        return final(int(argv[1]), argv[2], argv[3])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
