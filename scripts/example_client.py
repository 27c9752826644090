#!/usr/bin/env python3
"""Minimal roomcast client: connect, join a room, publish a message, print the event.

    pip install websockets
    python3 scripts/example_client.py --url ws://127.0.0.1:8080/ws --room lobby

Exits 0 once its own message has come back as an event. Protocol: docs/protocol.md.
"""
import argparse
import asyncio
import json
import sys

import websockets


async def run(url, room, text):
    async with websockets.connect(url) as ws:
        # The first frame is always the welcome; "conn" is our name in events' "from".
        welcome = json.loads(await ws.recv())
        print("welcome:", json.dumps(welcome))

        # Join. Until we are joined no event can arrive, so the next frame is the reply.
        await ws.send(json.dumps({"op": "join", "id": 1, "room": room}))
        joined = json.loads(await ws.recv())
        print("joined: ", json.dumps(joined))
        if not joined["ok"]:
            return 1

        # Publish, then read until we have both the reply (id 2) and our own event.
        data = {"text": text}
        await ws.send(json.dumps({"op": "publish", "id": 2, "room": room, "data": data}))
        reply = event = None
        while reply is None or event is None:
            frame = json.loads(await ws.recv())
            if "ok" in frame and frame["id"] == 2:
                reply = frame
                print("reply:  ", json.dumps(reply))
                if not reply["ok"]:
                    return 1
            elif frame.get("type") == "message" and frame["from"] == welcome["conn"]:
                event = frame
                print("event:  ", json.dumps(event))
        return 0 if event["seq"] == reply["seq"] else 1


def main():
    parser = argparse.ArgumentParser(description="Minimal roomcast client.")
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="a node's /ws URL")
    parser.add_argument("--room", default="lobby", help="room to join and publish to")
    parser.add_argument("--text", default="hello, roomcast", help="text to publish")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up after N seconds")
    args = parser.parse_args()
    try:
        coro = run(args.url, args.room, args.text)
        return asyncio.run(asyncio.wait_for(coro, args.timeout))
    except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
