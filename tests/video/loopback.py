"""A throttled HTTP server on 127.0.0.1 serving one file, that can be killed mid-stream (network tests)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ThrottledFileServer:
    """Serves `path` at http://127.0.0.1:<port>/<name>, `chunk` bytes every `interval` seconds.

    `kill()` cuts every open connection mid-response and stops accepting new ones, as a crashed camera
    server or a pulled cable would. `cut_first_after`: the first response is cut after that many bytes
    (a network hiccup), later ones are complete.
    """

    def __init__(
        self, path: Path, chunk: int = 4096, interval: float = 0.01, cut_first_after: int | None = None
    ) -> None:
        self.data = path.read_bytes()
        self.name = path.name
        self.killed = threading.Event()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.requests += 1
                limit = cut_first_after if server.requests == 1 and cut_first_after else len(server.data)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(server.data)))
                self.end_headers()
                for start in range(0, len(server.data), chunk):
                    if server.killed.is_set() or start >= limit:
                        break
                    try:
                        self.wfile.write(server.data[start : start + chunk])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(interval)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{self.name}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def kill(self) -> None:
        self.killed.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ThrottledFileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.killed.is_set():
            self.kill()
