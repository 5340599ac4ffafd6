"""aiohttp client + server round trips on both loops (stock asyncio as the oracle,
broomio.asyncio as the subject; see tests/_aio_support.py)."""

from __future__ import annotations

import asyncio

import pytest

from _aio_support import aio_loop, broomio_xfail, loop_factory, loop_name, run  # noqa: F401

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


async def _serve(app):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_aiohttp_round_trip(aio_loop):
    async def hello(request):
        return web.Response(text="hello " + request.match_info["name"])

    async def upload(request):
        data = await request.read()
        return web.json_response({"len": len(data), "last": data[-1]})

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(100):
            await resp.write(b"%05d\n" % i)
        await resp.write_eof()
        return resp

    async def main():
        app = web.Application()
        app.add_routes([web.get("/hello/{name}", hello), web.post("/upload", upload),
                        web.get("/stream", stream)])
        runner, base = await _serve(app)
        try:
            async with aiohttp.ClientSession() as session:
                texts = []
                for name in ("a", "b", "c"):  # keep-alive: one pooled connection
                    async with session.get(f"{base}/hello/{name}") as resp:
                        texts.append((resp.status, await resp.text()))
                body = bytes(range(256)) * 4096  # 1 MiB
                async with session.post(f"{base}/upload", data=body) as resp:
                    uploaded = await resp.json()
                async with session.get(f"{base}/stream") as resp:
                    lines = [line async for line in resp.content]
                async with session.get(f"{base}/nope") as resp:
                    missing = resp.status
                parallel = await asyncio.gather(*(
                    _get_text(session, f"{base}/hello/{i}") for i in range(20)))
        finally:
            await runner.cleanup()
        return texts, uploaded, len(lines), lines[-1], missing, parallel

    texts, uploaded, nlines, last, missing, parallel = run(aio_loop, main(), timeout=20)
    assert texts == [(200, "hello a"), (200, "hello b"), (200, "hello c")]
    assert uploaded == {"len": 1 << 20, "last": 255}
    assert (nlines, last) == (100, b"00099\n")
    assert missing == 404
    assert parallel == [f"hello {i}" for i in range(20)]


async def _get_text(session, url):
    async with session.get(url) as resp:
        return await resp.text()


def test_aiohttp_websocket(aio_loop):
    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def main():
        app = web.Application()
        app.add_routes([web.get("/ws", ws_handler)])
        runner, base = await _serve(app)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(base + "/ws") as ws:
                    await ws.send_str("shout")
                    text = await ws.receive_str()
                    await ws.send_bytes(b"\x01\x02\x03")
                    binary = await ws.receive_bytes()
                    await ws.close()
        finally:
            await runner.cleanup()
        return text, binary

    assert run(aio_loop, main(), timeout=20) == ("SHOUT", b"\x03\x02\x01")


def test_aiohttp_client_timeout(aio_loop):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="late")

    async def main():
        app = web.Application()
        app.add_routes([web.get("/slow", slow)])
        runner, base = await _serve(app)
        try:
            timeout = aiohttp.ClientTimeout(total=0.1)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                with pytest.raises(asyncio.TimeoutError):
                    async with session.get(base + "/slow") as resp:
                        await resp.text()
        finally:
            release.set()
            await runner.cleanup()
        return True

    assert run(aio_loop, main(), timeout=20)
