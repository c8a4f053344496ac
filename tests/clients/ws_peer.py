"""WebSocket peers for keel's client tests (tests/tests/clients.rs), on the `websockets`
library.

`server`: an echo server on 127.0.0.1 (a free port); prints `port <n>` once it serves,
then serves until stdin closes. It echoes text and binary messages as they are, and
answers the text "headers?" with the request path and headers it received as JSON.

`client <url>`: connects to the URL (keel), checks the echo of text, binary and a
message larger than one frame buffer, asks for the headers, closes cleanly, and
prints one JSON object with what it saw.

`idle-client <url> <seconds>`: one echo, then silence: prints whether (and after how
long) the proxy closed the connection.
"""

import asyncio
import json
import logging
import sys
import time

import websockets


async def echo(connection):
    async for message in connection:
        if message == "headers?":
            request = connection.request
            await connection.send(
                json.dumps(
                    {
                        "path": request.path,
                        "headers": {k.lower(): v for k, v in request.headers.raw_items()},
                    }
                )
            )
        else:
            await connection.send(message)


async def serve():
    # A proxy that cuts an idle connection is expected here, not a failure to report.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print("port %d" % port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def client(url):
    out = {}
    # No compression: the bytes keel logs are then the messages' own.
    async with websockets.connect(
        url, open_timeout=10, close_timeout=5, compression=None, max_size=2**21
    ) as ws:
        out["response_status"] = ws.response.status_code
        out["response_headers"] = {k.lower(): v for k, v in ws.response.headers.raw_items()}
        await ws.send("hello through keel")
        out["text"] = await asyncio.wait_for(ws.recv(), 10)
        await ws.send(b"\x00\x01binary\xff")
        binary = await asyncio.wait_for(ws.recv(), 10)
        out["binary_ok"] = binary == b"\x00\x01binary\xff"
        big = "x" * 300_000
        await ws.send(big)
        out["big_ok"] = (await asyncio.wait_for(ws.recv(), 10)) == big
        await ws.send("headers?")
        out["upstream"] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.close()
        out["close_code"] = ws.close_code
    print(json.dumps(out), flush=True)


async def idle_client(url, wait):
    """Sends one message, then stays silent for up to `wait` seconds: reports whether
    and when the proxy closed the connection."""
    out = {}
    async with websockets.connect(url, open_timeout=10, close_timeout=2, compression=None) as ws:
        await ws.send("before idling")
        out["echo"] = await asyncio.wait_for(ws.recv(), 10)
        started = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), wait)
            out["closed"] = False
        except asyncio.TimeoutError:
            out["closed"] = False
        except websockets.ConnectionClosed:
            out["closed"] = True
        out["idle_ms"] = int((time.monotonic() - started) * 1000)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        asyncio.run(serve())
    elif sys.argv[1:2] == ["client"]:
        asyncio.run(client(sys.argv[2]))
    elif sys.argv[1:2] == ["idle-client"]:
        asyncio.run(idle_client(sys.argv[2], float(sys.argv[3])))
    else:
        sys.exit("usage: ws_peer.py server | client <url>")
