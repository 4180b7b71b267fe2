"""A seed-compatible broadcast server on Python's `websockets` (asyncio API).

Every text message a client sends is broadcast, prefixed "Message from server: ",
to every open client, the sender included -- the same semantics as the seed's
Node.js server. Listens on HOST (default 127.0.0.1) and PORT (default 8080).
"""

import asyncio
import os
import signal

from websockets.asyncio.server import broadcast, serve

PREFIX = "Message from server: "
CLIENTS = set()


async def handler(websocket):
    CLIENTS.add(websocket)
    try:
        async for message in websocket:
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            broadcast(CLIENTS, PREFIX + message)
    finally:
        CLIENTS.discard(websocket)


async def main():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # max_queue / max_size at the library's defaults; no compression, as the other peers.
    async with serve(handler, host, port, compression=None, backlog=1024):
        print(f"listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
