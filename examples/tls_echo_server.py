"""A TLS echo server with serve_tls, and a client with open_tls_stream.

The demo makes a throwaway self-signed certificate for localhost/127.0.0.1 with the
``openssl`` command, serves TLS on an ephemeral port, connects a client that trusts only
that certificate, and also shows a client with the default (system) trust store being
refused.

Run:
    python examples/tls_echo_server.py                                   # demo, then exit
    python examples/tls_echo_server.py --serve 8443 --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import functools
import os
import ssl
import subprocess
import tempfile

import broomio


async def echo(stream: broomio.TLSStream) -> None:
    try:
        await stream.send_all(f"Welcome to the TLS server pal! ({stream.version()})\n".encode())
        async for chunk in stream:
            await stream.send_all(b"Got: " + chunk)
    except broomio.BrokenResourceError:
        # The client went away without a TLS close_notify (most clients just close the
        # socket), reset the connection, or sent garbage: only this connection ends.  An
        # exception escaping a handler would stop the whole server (trio semantics).
        pass


def self_signed_certificate(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def demo() -> None:
    with tempfile.TemporaryDirectory() as directory:
        cert, key = self_signed_certificate(directory)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=cert)

        async with broomio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(broomio.serve_tls, echo, 0, server_context, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            print(f"TLS echo server on 127.0.0.1:{port}")

            stream = await broomio.open_tls_stream("localhost", port, ssl_context=client_context)
            async with stream:
                print("server says:", (await stream.read_line()).decode().rstrip())
                for word in ("encrypted", "hello"):
                    await stream.send_all(word.encode() + b"\n")
                    print("server replied:", (await stream.read_line()).decode().rstrip())
                print("peer certificate subject:", dict(x[0] for x in stream.getpeercert()["subject"]))

            try:
                await broomio.open_tls_stream("localhost", port)  # system CAs only
            except ssl.SSLCertVerificationError as exc:
                print("default trust store refused the self-signed certificate:",
                      exc.verify_message)
            nursery.cancel()
    print("demo finished")


async def serve(port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    await broomio.serve_tls(echo, port, context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    if args.serve is None:
        broomio.run(demo)
    else:
        if not (args.cert and args.key):
            parser.error("--serve needs --cert and --key")
        try:
            broomio.run(serve, args.serve, args.cert, args.key)
        except KeyboardInterrupt:
            print("Exiting...")


if __name__ == "__main__":
    main()
