#!/usr/bin/env python3
"""The kernel's own cost of one send(2) on loopback TCP, with N open sockets.

herald's cost per delivery cannot go below what the kernel charges for the
write that carries it. This measures that floor on the machine at hand:
N connected socket pairs on 127.0.0.1, TCP_NODELAY, one send of SIZE bytes
to each in turn (the receivers do not read during the timed part), best of
several rounds. Python adds well under a microsecond per call.

    taskset -c 0 python3 benches/kernel_send_cost.py            # N = 10 and 1000, 90 bytes
    taskset -c 0 python3 benches/kernel_send_cost.py 1000 1440  # N, SIZE
"""
import socket
import sys
import time


def measure(n, size, rounds=5):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    clients, servers = [], []
    for _ in range(n):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        servers.append(s)
    msg = b"x" * size
    per_round = max(1, 20000 // n)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            for s in servers:
                s.send(msg)
        best = min(best, (time.perf_counter() - t0) / (per_round * n))
        for c in clients:  # drain, so no send buffer fills up
            while True:
                c.setblocking(False)
                try:
                    if not c.recv(1 << 20):
                        break
                except BlockingIOError:
                    break
    for sock in clients + servers + [listener]:
        sock.close()
    return best


def main():
    if len(sys.argv) > 1:
        cases = [(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 90)]
    else:
        cases = [(10, 90), (1000, 90)]
    for n, size in cases:
        print(f"{n} sockets, {size}-byte sends: {measure(n, size) * 1e6:.2f} us per send(2)")


if __name__ == "__main__":
    main()
