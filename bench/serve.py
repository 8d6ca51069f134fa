"""Run the project's test server for the benchmark, with TCP_NODELAY on its connections.

``worker.testserver`` binds a ``socket.socket(AF_INET, SOCK_STREAM)``, whose protocol number is 0;
asyncio only turns Nagle off for sockets whose protocol is ``IPPROTO_TCP``, so every response
(headers and body are two writes) waits for the client's delayed ACK: about 40 ms per call at
"zero" latency. This wrapper binds the same way with ``IPPROTO_TCP`` — the one-line fix proposed
in RESULTS.md. ``--stock`` runs the server untouched, to measure the difference.

    python -m bench.serve --port 8399 --latency 0.25 [--stock]
"""

from __future__ import annotations

import argparse
import socket

import uvicorn

from worker.testserver import TestServer


class NoDelayTestServer(TestServer):
    __test__ = False

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--stock", action="store_true", help="the project's server exactly as it is")
    args = parser.parse_args(argv)
    server = (TestServer if args.stock else NoDelayTestServer)(args.host, args.port, args.latency)
    sock = server._bind()
    print(server.base_url, flush=True)
    server._uvicorn(log_config=uvicorn.config.LOGGING_CONFIG).run(sockets=[sock])


if __name__ == "__main__":
    main()
