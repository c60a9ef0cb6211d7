#!/usr/bin/env python3
"""A deliberately slow webhook receiver for bench/api_bench.sh.

    slow_receiver.py PORT_FILE DELAY_SECONDS

Listens on an ephemeral loopback port (written to PORT_FILE once listening),
answers every POST with 200 {} after sleeping DELAY_SECONDS, so that a
backflow run delivering to it stays in progress for as long as the benchmark
needs. GET /stats returns {"requests": N}: the POSTs answered so far (the
benchmark reads it to show that the run kept delivering while it measured).
One thread per connection, HTTP/1.1 keep-alive. Stops on SIGTERM.
"""

import http.server
import json
import os
import signal
import sys
import threading
import time

count_lock = threading.Lock()
answered = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        global answered
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        time.sleep(DELAY)
        with count_lock:
            answered += 1
        self._reply(b"{}")

    def do_GET(self) -> None:  # noqa: N802
        with count_lock:
            n = answered
        self._reply(json.dumps({"requests": n}).encode())

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: slow_receiver.py PORT_FILE DELAY_SECONDS")
    DELAY = float(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, sys.argv[1])
    server.serve_forever()
