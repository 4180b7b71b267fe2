#!/usr/bin/env python3
"""Plain TCP in, TLS out: lets kosoku, which has no TLS, drive herald's wss://.

Usage: tls_bridge.py --connect HOST:PORT --cafile CERT.pem --server-name NAME
                     --port-file FILE

Listens on a free 127.0.0.1 port (written to --port-file once listening);
for each connection it opens a TLS connection to --connect (verifying the
certificate against --cafile for --server-name: the self-signed certificate
run.sh made) and relays bytes both ways unchanged. When one side ends, the
other is closed: the TLS side with close_notify. So every byte of the
WebSocket conversation, the handshake, frames and closes, goes through
herald's TLS transport exactly as kosoku sent it.

kosoku 0.1.0 (the pinned Autobahn driver) refuses wss:// URLs ("invalid url
scheme"), and its wheel carries no TLS library. Standard library only; runs
until killed (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys

CHUNK = 256 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies reader to writer until the reader ends, then closes the writer."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.connect.rpartition(":")
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    failures = 0

    async def on_client(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        nonlocal failures
        try:
            server_r, server_w = await asyncio.open_connection(
                host, int(port), ssl=ctx, server_hostname=args.server_name
            )
        except (OSError, ssl.SSLError) as e:
            failures += 1
            print(f"tls_bridge: connecting to {args.connect} failed: {e}", file=sys.stderr)
            client_w.close()
            return
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, limit=CHUNK)
    bound = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{bound}\n")
    os.replace(tmp, args.port_file)

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with server:
        await stop
    if failures:
        print(f"tls_bridge: {failures} TLS connections to {args.connect} failed", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="HOST:PORT of the TLS server")
    p.add_argument("--cafile", required=True, help="certificate to trust (PEM)")
    p.add_argument("--server-name", default="localhost", help="name to verify (SNI)")
    p.add_argument("--port-file", required=True, help="where to write the listening port")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
