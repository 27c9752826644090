#!/usr/bin/env python3
"""The socket layer's promises, checked with Python's `websockets` (an independent client).

Usage: ws_conformance.py ws://HOST:PORT/ws   (the node runs with --max-frame-bytes 10000)
Exits non-zero with a message on the first broken promise.
"""
import asyncio
import json
import sys

import websockets
from websockets.exceptions import ConnectionClosed

URL = sys.argv[1]
TIMEOUT = 10


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def welcome(ws):
    w = await recv_json(ws)
    assert w["type"] == "welcome", w


async def ping_pong():
    async with websockets.connect(URL) as ws:
        await welcome(ws)
        waiter = await ws.ping(b"py-ping")
        latency = await asyncio.wait_for(waiter, TIMEOUT)
        assert latency >= 0


async def fragmented():
    async with websockets.connect(URL) as ws:
        await welcome(ws)
        # websockets sends an iterable of strings as one fragmented text message.
        await ws.send(['{"op":"ping",', '"id":"py-frag"', "}"])
        r = await recv_json(ws)
        assert r["id"] == "py-frag" and r["ok"] is True, r


async def publish_and_receive():
    async with websockets.connect(URL) as a, websockets.connect(URL) as b:
        await welcome(a)
        await welcome(b)
        await a.send(json.dumps({"op": "join", "room": "py", "id": 1}))
        assert (await recv_json(a))["ok"] is True
        for i in range(50):
            await b.send(json.dumps({"op": "publish", "room": "py", "data": i, "id": i}))
        seqs = []
        while len(seqs) < 50:
            m = await recv_json(a)
            if m.get("type") == "message":
                seqs.append(m["seq"])
        assert seqs == list(range(1, 51)), seqs


async def closed_with(ws, code):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed as e:
        got = e.rcvd.code if e.rcvd else None
        assert got == code, f"closed with {got}, expected {code}"


async def oversized():
    async with websockets.connect(URL, max_size=None) as ws:
        await welcome(ws)
        await ws.send("x" * 10_001)
        await closed_with(ws, 1009)


async def invalid_utf8():
    async with websockets.connect(URL) as ws:
        await welcome(ws)
        # Bytes sent as a text frame are not checked by the client: invalid UTF-8 on the wire.
        await ws.send(b'{"op":"ping","id":"\xff\xfe"}', text=True)
        await closed_with(ws, 1007)


async def client_close_is_answered_and_tcp_closed():
    # The client waits for the server to close TCP after the close handshake (up to its
    # close_timeout, far beyond our deadline): ws.close() returns in time only if it does.
    ws = await websockets.connect(URL, close_timeout=60)
    await welcome(ws)
    await asyncio.wait_for(ws.close(code=1000), TIMEOUT)
    assert ws.close_code == 1000, ws.close_code
    assert ws.transport.is_closing()


async def main():
    for check in [ping_pong, fragmented, publish_and_receive, oversized, invalid_utf8,
                  client_close_is_answered_and_tcp_closed]:
        await asyncio.wait_for(check(), 30)
        print("ok", check.__name__)


asyncio.run(main())
