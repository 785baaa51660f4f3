"""A local stand-in for the Hugging Face hub: just enough HTTP for scripts/download_weights.py.

It answers `GET /api/models/{repo}[/revision/{rev}]` (the file list), `HEAD|GET /{repo}/resolve/{rev}/{path}`
(small files directly, large ones by a redirect to a "CDN" on another host name, with X-Linked-Size the
way the real hub does it), and ranged `GET /cdn/{repo}/{path}`. Tests can make it drop a connection after
some bytes, or misreport a size, and read back every request it saw.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 1024  # files at least this big are served through the CDN redirect, like LFS/Xet files


@dataclass
class HubState:
    """Repositories, fault injections and the request log shared with the handler threads."""

    repos: dict[str, dict[str, bytes]]
    cut_after: dict[str, list[int]] = field(default_factory=dict)  # path -> byte counts, one per GET, popped
    reported_size: dict[str, int] = field(default_factory=dict)  # path -> size to claim instead of the real one
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeHub:
    """Runs the fake hub on 127.0.0.1 (API) / localhost (CDN) on a free port, in a daemon thread."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.state = HubState(repos)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self, suffix: str) -> list[str | None]:
        """Range headers of the CDN GETs of a file whose path ends with `suffix`."""
        return [rng for method, path, rng in self.state.requests if method == "GET" and path.startswith("/cdn/")
                and path.endswith(suffix)]


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.state.lock:
            self.state.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self._model_info(path[len("/api/models/"):])
        if path.startswith("/cdn/"):
            return self._cdn(path[len("/cdn/"):], head)
        if "/resolve/" in path:
            return self._resolve(path, head)
        self._send(404, b"not found", {})

    def _model_info(self, rest: str) -> None:
        repo_id = rest.split("/revision/")[0]
        files = self.state.repos.get(repo_id)
        if files is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        body = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": name} for name in sorted(files)]}
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _lookup(self, repo_and_path: str) -> tuple[str, bytes] | None:
        for repo_id, files in self.state.repos.items():
            prefix = repo_id + "/"
            if repo_and_path.startswith(prefix) and repo_and_path[len(prefix):] in files:
                path = repo_and_path[len(prefix):]
                return path, files[path]
        return None

    def _resolve(self, path: str, head: bool) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        _revision, _, file_path = rest.partition("/")
        found = self._lookup(f"{repo_id}/{file_path}")
        if found is None:
            return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
        _, data = found
        size = self.state.reported_size.get(file_path, len(data))
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hash(data) & 0xffffffff:x}"'}
        if len(data) >= LFS_THRESHOLD:
            headers.update({"Location": f"http://localhost:{self.server.server_address[1]}/cdn/{repo_id}/{file_path}",
                            "X-Linked-Size": str(size), "X-Linked-Etag": headers["ETag"]})
            return self._send(302, b"", headers, head=True)
        self._send(200, data, headers, head=head, length=size)

    def _cdn(self, repo_and_path: str, head: bool) -> None:
        found = self._lookup(repo_and_path)
        if found is None:
            return self._send(404, b"", {})
        path, data = found
        start = 0
        status = 200
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][len("bytes="):].split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        body = data[start:]
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if status == 206 else {}
        with self.state.lock:
            cuts = self.state.cut_after.get(path)
            cut = cuts.pop(0) if cuts else None
        if cut is not None and not head:
            self._send(status, body[:cut], headers, length=len(body), close=True)
            return
        self._send(status, body, headers, head=head)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False,
              length: int | None = None, close: bool = False) -> None:
        """Write a response; `length` may claim more bytes than `body` has (a dropped connection)."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        if close:
            self.wfile.flush()
            self.close_connection = True
