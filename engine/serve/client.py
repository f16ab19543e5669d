"""A small blocking HTTP client for `vmatch serve` (the benchmark and the tests use it).

Standard library only (http.client): one keep-alive connection per client object, so a load
generator uses one object per thread.  JSON bodies and multipart video uploads.
"""
from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class ServeClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        u = urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None) -> Reply:
        h = dict(headers or {})
        if self.token and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        if params:
            path += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=h)
                r = conn.getresponse()
                data = r.read()
                reply = Reply(r.status, data, {k.lower(): v for k, v in r.getheaders()})
                if reply.headers.get("connection", "").lower() == "close":
                    self.close()
                return reply
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed while idle: retry once on a new one
                self.close()
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Reply:
        return self.request("GET", path, params=params or None)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def post_json(self, path: str, obj: Any, params: dict[str, Any] | None = None) -> Reply:
        return self.request("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}, params)

    def put_json(self, path: str, obj: Any) -> Reply:
        return self.request("PUT", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def post_file(self, path: str, file: str | Path | bytes, field: str = "video", filename: str | None = None,
                  params: dict[str, Any] | None = None) -> Reply:
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        name = filename or (Path(file).name if not isinstance(file, bytes) else "upload.bin")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, params)
