"""A file served over loopback for ``pretrained=True`` tests: every GET gets its bytes, whatever the path (share
links such as heibox's and koofr's end in a query, not a file name)."""

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def served_file(payload: Path, monkeypatch, tmp_path: Path) -> Iterator[list[str]]:
    """Serve ``payload`` on an ephemeral 127.0.0.1 port, point the weights mirror at it and the caches into
    ``tmp_path``; yields the list of request paths."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = payload.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        yield requests
    finally:
        server.shutdown()
        server.server_close()
