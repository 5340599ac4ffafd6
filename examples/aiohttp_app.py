"""An aiohttp web application and an aiohttp client, both on broomio's asyncio event loop.

aiohttp only needs an asyncio event loop, so ``broomio.asyncio`` runs it unchanged: the
server is an ``aiohttp.web.Application`` behind an ``AppRunner``/``TCPSite`` on 127.0.0.1
(any free port), the client an ``aiohttp.ClientSession`` that GETs a few routes (plain
text, JSON, a query parameter, a 404) through one pooled connection, then POSTs a body.

Run: ``python examples/aiohttp_app.py`` (needs ``pip install aiohttp``; well under a second).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

import broomio.asyncio


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello from aiohttp on broomio")


async def add(request: web.Request) -> web.Response:
    a = int(request.query.get("a", "0"))
    b = int(request.query.get("b", "0"))
    return web.json_response({"a": a, "b": b, "sum": a + b})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body[::-1], content_type="application/octet-stream")


def make_app() -> web.Application:
    app = web.Application()
    app.add_routes([web.get("/", hello), web.get("/add", add), web.post("/echo", echo)])
    return app


async def main() -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]  # where the OS put us (port 0 = any free port)
    base = f"http://127.0.0.1:{port}"
    print("broomio loop:", isinstance(asyncio.get_running_loop(), broomio.asyncio.EventLoop))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as resp:
                print("GET /", resp.status, await resp.text())
            async with session.get(base + "/add", params={"a": "2", "b": "40"}) as resp:
                print("GET /add", resp.status, await resp.json())
            async with session.get(base + "/missing") as resp:
                print("GET /missing", resp.status)
            async with session.post(base + "/echo", data=b"!oimoorb") as resp:
                print("POST /echo", resp.status, (await resp.read()).decode())
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    broomio.asyncio.run(main())
