"""Campaign email on the wire: the message bytes written by campaigns/mime.py read back by
the email package, and campaigns/mail.py's groups of SMTP sessions against a real server
(aiosmtpd on loopback) that refuses a recipient, drops a connection, or pipelines."""

import datetime as dt
import email
import socket
from email import policy

import pytest

from campaigns import delivery
from campaigns.mail import Mailer, Outgoing
from campaigns.mime import header, message_bytes
from campaigns.models import Delivery
from tests.factories import campaign_make

from .test_delivery import NOON_UTC, launch, members

TEXTS = {
    "ascii": ("Hi Kim", "You have 1,200 points.\nNext tier: Gold.\n.a line starting with a dot"),
    "sv": ("Hej Kim, du har poäng", "Du har 1 200 poäng. Nästa nivå: Guld.\nTips: Kanelbulle"),
    "ru": (
        "Привет, Ким! У вас 1 200 баллов — до уровня «Золото» осталось совсем немного",
        "У вас 1 200 баллов.\nСледующий уровень: Золото.\nhttps://shop.example.com/offers",
    ),
    "th": ("สวัสดีคุณคิม คุณมี 1,200 คะแนน", "คุณมี 1,200 คะแนน\nระดับถัดไป: ทอง\n" + "ขอบคุณ " * 40),
}


def parsed(data: bytes):
    return email.message_from_bytes(data, policy=policy.default)


def text(message) -> str:
    return message.get_content().replace("\r\n", "\n").rstrip("\n")


@pytest.mark.parametrize("language", TEXTS)
def test_message_bytes_read_back_as_written(language):
    subject, body = TEXTS[language]
    data = message_bytes(
        from_email="Bønne & Brød <loyalty@example.com>",
        to="kim@example.com",
        subject=subject,
        body=body,
        headers={
            "Message-ID": "<delivery-7@loyalty.example.com>",
            "List-Unsubscribe": "<https://loyalty.example.com/m/unsubscribe/abc/>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    assert data.isascii(), "7bit on the wire: no server needs 8BITMIME"
    lines = data.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), "headers folded, bodies wrapped"
    assert b"\n" not in data.replace(b"\r\n", b""), "every line ends in CRLF"
    message = parsed(data)
    assert not message.defects and not [v for v in message.values() if v.defects]
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Bønne & Brød"
    assert message["From"].addresses[0].addr_spec == "loyalty@example.com"
    assert message["To"] == "kim@example.com"
    assert message["Message-ID"] == "<delivery-7@loyalty.example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Date"].datetime is not None
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
    assert text(message) == body


def test_the_body_encoding_suits_the_text():
    def encoding(body):
        return parsed(message_bytes(from_email="a@b.c", to="d@e.f", subject="s", body=body))[
            "Content-Transfer-Encoding"
        ]

    assert encoding("plain words") == "7bit"
    assert encoding("x" * 1200) == "quoted-printable"  # longer than SMTP's 998
    assert encoding("Du har 1 200 poäng") == "quoted-printable"
    assert encoding("คุณมี 1,200 คะแนน") == "base64"


def test_headers_refuse_line_breaks():
    with pytest.raises(ValueError, match="line break"):
        header("Subject", "Hello\r\nBcc: everyone@example.com")


# --- Groups of SMTP sessions against a real server --------------------------------------------


class Server:
    """aiosmtpd on loopback that records what it accepted; it refuses the recipients in
    `refuse`, drops the connection at the RCPT of the (n+1)-th message when `drop_after`
    is n, and can advertise PIPELINING."""

    def __init__(self, *, refuse=(), drop_after=None, pipelining=False):
        self.refuse, self.drop_after, self.pipelining = set(refuse), drop_after, pipelining
        self.messages, self.rcpts, self.dropped = [], 0, 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        self.rcpts += 1
        if self.drop_after is not None and self.rcpts == self.drop_after + 1:
            self.dropped += 1
            server.transport.close()
            return "421 closing"
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(parsed(envelope.content))
        return "250 OK"

    def received(self) -> list[str]:
        return sorted(m["To"] for m in self.messages)


@pytest.fixture
def serve(settings):
    from aiosmtpd.controller import Controller

    controllers = []

    def start(**options) -> Server:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = Server(**options)
        controller = Controller(server, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        return server

    yield start
    for controller in controllers:
        controller.stop()


def outgoing(n: int) -> list[Outgoing]:
    sender = "Loyalty <loyalty@example.com>"
    return [
        Outgoing(key=i, from_email=sender, to=f"m{i:02d}@example.com", subject="Hi", body="Hi")
        for i in range(n)
    ]


@pytest.mark.parametrize("pipelining", [False, True], ids=["stepwise", "pipelined"])
def test_a_refused_recipient_fails_alone_and_the_group_is_committed_once(serve, pipelining):
    server = serve(refuse={"m03@example.com"}, pipelining=pipelining)
    commits = []
    with Mailer(sessions=4) as mailer:
        outcome = mailer.send(outgoing(10), commit=commits.append)
        assert all(s.pipelining is pipelining for s in mailer.sessions)
    assert "550" in str(outcome.pop(3))
    assert set(outcome.values()) == {None}
    assert commits == [[0, 1, 2], [4, 5, 6, 7], [8, 9]], "one commit per group, without the refused one"
    assert server.received() == [f"m{i:02d}@example.com" for i in range(10) if i != 3]


@pytest.mark.parametrize("pipelining", [False, True], ids=["stepwise", "pipelined"])
def test_a_dropped_connection_fails_its_message_alone_and_the_session_is_reopened(serve, pipelining):
    server = serve(drop_after=5, pipelining=pipelining)
    with Mailer(sessions=4) as mailer:
        outcome = mailer.send(outgoing(12), commit=lambda keys: None)
    failed = [key for key, error in outcome.items() if error is not None]
    assert server.dropped == 1 and len(failed) == 1
    assert server.received() == [f"m{i:02d}@example.com" for i in range(12) if i not in failed]


def test_nothing_is_delivered_when_the_commit_fails(serve):
    """The dots come only after the commit: a failed commit leaves half-sent messages,
    which the server discards when the sessions close."""
    server = serve()

    def commit(keys):
        raise RuntimeError("the database went away")

    mailer = Mailer(sessions=4)
    with pytest.raises(RuntimeError):
        mailer.send(outgoing(4), commit=commit)
    mailer.close()
    with Mailer(sessions=4) as again:
        assert set(again.send(outgoing(2), commit=lambda keys: None).values()) == {None}
    assert server.received() == ["m00@example.com", "m01@example.com"]


@pytest.mark.django_db(transaction=True)
def test_deliveries_refused_or_dropped_mid_batch_are_retried_and_sent_once(program, serve, settings):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    settings.CAMPAIGN_FREQUENCY_CAP = 0
    settings.CAMPAIGN_SMTP_SESSIONS = 8
    people = members(40)
    refused = people[17].email
    server = serve(refuse={refused}, drop_after=25)
    launch(
        campaign_make(
            contents={"en": ("Здравствуйте, {{ first_name }}", "У вас {{ points_balance }} баллов.")}
        )
    )
    delivery.dispatch(now=NOON_UTC)
    report = delivery.deliveries_send(now=NOON_UTC)
    assert report["claimed"] == 40 and report["sent"] == 38 and report["failed"] == 2
    retry = Delivery.objects.filter(status="pending")
    assert retry.count() == 2 and all(d.attempts == 1 for d in retry)
    assert "550" in retry.get(customer__email=refused).reason
    assert len(server.received()) == len(set(server.received())) == 38

    server.refuse.clear()
    later = NOON_UTC + dt.timedelta(minutes=5)
    assert delivery.deliveries_send(now=later)["sent"] == 2
    assert server.received() == sorted(p.email for p in people), "everyone once, nobody twice"
    assert Delivery.objects.filter(status="sent").count() == 40
    assert {m["Subject"].split(",")[0] for m in server.messages} == {"Здравствуйте"}
    assert "баллов" in text(server.messages[0])


@pytest.mark.django_db(transaction=True)
def test_a_batch_costs_a_few_queries_per_group_not_per_message(
    program, serve, settings, django_assert_max_num_queries
):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    settings.CAMPAIGN_FREQUENCY_CAP = 0
    settings.CAMPAIGN_SMTP_SESSIONS = 16
    members(48)
    server = serve()
    launch(campaign_make())
    delivery.dispatch(now=NOON_UTC)
    # The claim (BEGIN, SET LOCAL, UPDATE … RETURNING, COMMIT), the batch with its customers
    # and campaigns, the personalisation values (4), the content, and one mark per group of
    # 16 messages (3): 13, where a mark per message would make it 58.
    with django_assert_max_num_queries(13):
        assert delivery.deliveries_send(now=NOON_UTC)["sent"] == 48
    assert len(server.messages) == 48
