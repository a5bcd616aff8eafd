"""loyalty_site.gunicorn_worker.OneThreadWorker, the production worker class, in a real gunicorn:
keep-alive, pipelined requests, a client that connects and says nothing, purchases, a graceful
stop, and no HTTP/2."""

from __future__ import annotations

import http.client
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass

import pytest
from django.db import connection
from django.utils import timezone
from gunicorn.config import Config

from loyalty_site.gunicorn_worker import OneThreadWorker
from rewards.models import Purchase
from rewards.services import integration_token_create
from tests.live_server import LiveServer, backends_gone

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = ("--worker-class", "loyalty_site.gunicorn_worker.OneThreadWorker", "--threads", "1")
APP_NAME = "live-worker-test"


@pytest.fixture
def server(program, tmp_path):
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {"DATABASE_URL": f"{url}?application_name={APP_NAME}"}
    live = LiveServer(env, tmp_path / "gunicorn.log", (*WORKER, "--keep-alive", "10"))
    yield live.start()
    live.stop()
    backends_gone(APP_NAME)


@pytest.fixture
def token(program):
    return integration_token_create(name="Till 1")[1]


def purchase_body(external_id: str, customer: str = "C-1") -> bytes:
    return json.dumps(
        {
            "external_id": external_id,
            "customer": customer,
            "amount": "120.00",
            "currency": "DKK",
            "occurred_at": timezone.now().isoformat(),
        }
    ).encode()


def raw_request(path: str, *, host: str = "127.0.0.1", body: bytes = b"", token: str = "") -> bytes:
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def read_answers(sock: socket.socket, count: int) -> list[RawAnswer]:
    """`count` answers read one after the other from the socket (each with a Content-Length)."""
    stream = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        answers.append(RawAnswer(status, headers, stream.read(int(headers["content-length"]))))
    return answers


def test_one_connection_serves_many_requests_and_purchases(server, token):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        for n in range(3):
            conn.request("POST", "/api/v1/purchases", body=purchase_body(f"k-{n}"), headers=auth)
            answer = conn.getresponse()
            assert answer.status == 201, answer.read()
            assert json.loads(answer.read())["points_earned"] == 0  # a shopper: recorded, no points
            assert answer.getheader("Connection") != "close"
        local = conn.sock.getsockname()
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        assert conn.sock.getsockname() == local  # the same connection all along
    finally:
        conn.close()
    assert Purchase.objects.filter(external_id__startswith="k-").count() == 3


def test_pipelined_requests_are_answered_in_order(server, token):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            raw_request("/api/v1/purchases", body=purchase_body("pipe-1"), token=token)
            + raw_request("/api/v1/purchases", body=purchase_body("pipe-2"), token=token)
            + raw_request("/healthz")
        )
        answers = read_answers(sock, 3)
    assert [a.status for a in answers] == [201, 201, 200]
    assert set(Purchase.objects.values_list("external_id", flat=True)) == {"pipe-1", "pipe-2"}


def test_a_silent_client_does_not_hold_the_worker(server):
    """One worker: a connection that never sends a byte waits on the poller, not in the way."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        time.sleep(0.3)  # accepted by now
        started = time.monotonic()
        answer = server.request("GET", "/healthz", timeout=4)
        assert answer.status == 200
        assert time.monotonic() - started < 3  # gthread's own wait for a first byte is 5 s
        silent.sendall(raw_request("/healthz"))  # and it is served once it speaks
        assert read_answers(silent, 1)[0].status == 200


def test_sigterm_stops_the_server_gracefully(server):
    assert server.request("GET", "/healthz").status == 200
    server.stop()
    assert server.proc.returncode == 0
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("option", [("http_protocols", "h2,h1"), ("http2_cleartext", "prior-knowledge")])
def test_refuses_to_serve_http2(option):
    """HTTP/2 serves a connection for its whole life: on the loop's thread that would be one
    client at a time. (Today gunicorn refuses h2 anyway without the h2 package.)"""
    cfg = Config()
    cfg.set("threads", 1)
    cfg.set(*option)
    with pytest.raises(RuntimeError, match="HTTP/1.x only"):
        OneThreadWorker.check_config(cfg, logging.getLogger("gunicorn.error"))
    cfg.set("threads", 4)  # then it is gthread, unchanged
    OneThreadWorker.check_config(cfg, logging.getLogger("gunicorn.error"))


def test_a_kept_connection_is_answered_after_sigterm_and_then_closed(server, token):
    """As gthread does it: a kept-alive connection lingers a moment after the stop, and a
    request on it meanwhile is answered with "Connection: close"."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw_request("/api/v1/purchases", body=purchase_body("before"), token=token))
        assert read_answers(sock, 1)[0].status == 201
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(raw_request("/api/v1/purchases", body=purchase_body("after"), token=token))
        answer = read_answers(sock, 1)[0]
        assert (answer.status, answer.getheader("Connection")) == (201, "close")
    server.proc.wait(timeout=30)
    assert server.proc.returncode == 0
    assert Purchase.objects.filter(external_id__in=["before", "after"]).count() == 2
