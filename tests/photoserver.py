"""A real HTTP server on loopback that serves the test photos (tests/data/photos) for jobs
submitted by ``image_url``, and the awkward answers a fetch must survive. It logs every request
it receives (``server.requests``: paths), so a test can show that a refused redirect target was
never asked.

Paths:
  /photos/<name>               the photo's bytes
  /redirect/<n>/photos/<name>  n redirects (302) to itself, then the photo
  /redirect-to?url=<url>       a 302 to any URL (e.g. a refused address)
  /huge                        an endless body without Content-Length (chunked)
  /huge-declared               a Content-Length past any limit, then a little body
  /slow                        a few bytes, then silence for ``slow_seconds``
  /flaky/<key>/photos/<name>   500 the first ``flaky_failures`` times per key, then the photo
  /status/<code>               that status, empty body
  /text                        text/plain, not an image
"""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TESTDATA = Path(__file__).resolve().parent / "data" / "photos"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-body (the fetch's size limit, its deadline) is expected here.
        pass


class PhotoServer:
    def __init__(self, *, host: str = "127.0.0.1", flaky_failures: int = 1, slow_seconds: float = 30.0) -> None:
        self.requests: list[str] = []
        self.hosts: list[str] = []  # each request's Host header
        self.flaky_failures = flaky_failures
        self.slow_seconds = slow_seconds
        self._flaky: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                    server.hosts.append(self.headers.get("Host", ""))
                try:
                    server._answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _Server((host, 0), Handler)
        self.port = self._httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> "PhotoServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for path in self.requests if path.startswith(prefix))

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path = parts.path
        if path.startswith("/photos/"):
            return self._photo(handler, path.removeprefix("/photos/"))
        if path.startswith("/redirect/"):
            _, _, n, rest = path.split("/", 3)
            target = f"/redirect/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"
            return self._send(handler, 302, b"", headers={"Location": target})
        if path == "/redirect-to":
            return self._send(handler, 302, b"", headers={"Location": parse_qs(parts.query)["url"][0]})
        if path == "/huge":
            return self._endless(handler)
        if path == "/huge-declared":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", str(10**12))
            handler.end_headers()
            handler.wfile.write(b"\xff\xd8\xff" + b"\0" * 1024)
            handler.close_connection = True
            return None
        if path == "/slow":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            handler.wfile.write(b"\xff\xd8\xff")
            handler.wfile.flush()
            self._stop.wait(self.slow_seconds)
            handler.close_connection = True
            return None
        if path.startswith("/flaky/"):
            _, _, key, rest = path.split("/", 3)
            with self._lock:
                seen = self._flaky.get(key, 0)
                self._flaky[key] = seen + 1
            if seen < self.flaky_failures:
                return self._send(handler, 500, b"try again")
            return self._photo(handler, rest.removeprefix("photos/"))
        if path.startswith("/status/"):
            return self._send(handler, int(path.removeprefix("/status/")), b"")
        if path == "/text":
            return self._send(handler, 200, b"hello, not a photo\n" * 10, content_type="text/plain")
        return self._send(handler, 404, b"not found")

    def _photo(self, handler, name: str) -> None:
        file = TESTDATA / name
        if "/" in name or not file.is_file():
            return self._send(handler, 404, b"not found")
        content_type = "image/jpeg" if name.endswith(".jpg") else "image/png"
        return self._send(handler, 200, file.read_bytes(), content_type=content_type)

    def _endless(self, handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"\0" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        deadline = time.monotonic() + 60
        # Until the client hangs up (it must, at the size limit) or a minute passes.
        while time.monotonic() < deadline and not self._stop.is_set():
            handler.wfile.write(frame)
        handler.close_connection = True

    @staticmethod
    def _send(handler, code: int, body: bytes, *, content_type: str = "application/octet-stream", headers: dict | None = None) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
