"""How many requests a second bench/fake.py answers on this machine:
``python -m bench.fakecheck [--clients 4] [--seconds 3] [--users 1]``.

The fake must never be what limits a benchmark result. This starts it as the runner does
(its own process) and hits it from ``--clients`` processes, each one keep-alive connection
sending Braze ``/users/track`` calls of ``--users`` users back to back over raw sockets
(a ``requests`` client would measure itself). The clients share the machine's cores with
the fake, so the figure is a floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import start_fake


def _client(
    host: str, port: int, users: int, seconds: float, results: multiprocessing.Queue
) -> None:
    attributes = [
        {"external_id": f"u{i}", "email_subscribe": "opted_in", "bench_enqueued_at": "0"}
        for i in range(users)
    ]
    body = json.dumps({"attributes": attributes}).encode()
    request = (
        b"POST /users/track HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    done = 0
    with socket.create_connection((host, port)) as sock:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the fake closed the connection")
                answer += chunk
            done += 1
    results.put(done)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fakecheck", description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=1, help="users per call")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prefsync-fakecheck-") as workdir:
        process, url = start_fake(Path(workdir), brevo_limit=10, brevo_window=1.0)
        try:
            where = urlsplit(url)
            results: multiprocessing.Queue = multiprocessing.Queue()
            clients = [
                multiprocessing.Process(
                    target=_client,
                    args=(where.hostname, where.port, args.users, args.seconds, results),
                )
                for _ in range(args.clients)
            ]
            for client in clients:
                client.start()
            calls = sum(results.get(timeout=args.seconds + 30) for _ in clients)
            for client in clients:
                client.join()
        finally:
            process.stop()
    rate = calls / args.seconds
    print(
        f"{rate:,.0f} calls/s = {rate * args.users:,.0f} users/s "
        f"({args.clients} clients, {args.users} user(s) per call, {args.seconds:g} s)"
    )


if __name__ == "__main__":
    main()
