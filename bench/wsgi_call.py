"""The site's WSGI application called in this process as gunicorn calls it: one request, with
Django's request_started/finished signals (and so the per-request connection handling) that
the test client leaves out. Used by bench/query_counts.py and bench/inprocess.py."""

from __future__ import annotations

import io
import sys


def wsgi_call(application, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    """(status code, body) of one request; `headers` by their HTTP names."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    status = []
    result = application(environ, lambda line, response_headers, exc_info=None: status.append(line))
    try:
        payload = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0].split()[0]), payload
