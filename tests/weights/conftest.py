"""A real HTTP server on 127.0.0.1 serving Google's weight files for the named-variant tests (no other network)."""

import http.server
import socket
import threading

import pytest


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` with HTTP Range support; `server.cut_next` cuts the next transfer halfway."""

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        server.headers.append(dict(self.headers))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "no such file")
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_next:
            server.cut_next = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the connection drop mid-file
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests, httpd.headers, httpd.cut_next = {}, [], [], False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(120, httpd.shutdown)  # bounded even if a test hangs
    stopper.start()
    monkeypatch.setenv("VIT_ACCEL_WEIGHTS_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    yield httpd
    stopper.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
