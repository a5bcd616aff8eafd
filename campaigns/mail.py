"""Sending campaign email so that no message is ever sent twice, many at a time.

A mail server commits a message when it reads the final "." of the DATA command. We
write the whole message except that dot, commit our own "sent" mark, and only then write
the dot. A worker killed before PostgreSQL commits the mark leaves half-sent messages that
the server discards (the sweeper returns the rows and they are sent again, once). So there
is no window for a duplicate. There is one for a loss, and no ordering of two systems
closes both: a worker killed after PostgreSQL has committed a group's marks but before it
has read that reply and written the dots (one round trip to the database, typically well
under a millisecond) leaves that group marked sent and never delivered. It is at most one
group (`CAMPAIGN_SMTP_SESSIONS` messages), all with the same `sent_at`; a mail server that
takes a message twice is the worse failure for a campaign, so the window is on this side.

Speed comes from doing this for k messages at once over k SMTP sessions kept open (k is
`CAMPAIGN_SMTP_SESSIONS`): each step (MAIL, RCPT, DATA, the bodies, the dots) is written
to every session before any reply is read, so the k round trips overlap; when a server
advertises PIPELINING (RFC 2920) MAIL, RCPT and DATA go in one write. The k "sent" marks
are one UPDATE and one commit. The bytes come from campaigns/mime.py, not the email
package. A refused recipient or a broken session fails only its own message.

Backends other than SMTP (console, file, in-memory: the demo and most tests) have no
such window to close: the marks are committed, then the messages handed over.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from email.utils import formatdate

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

from . import mime

DEFAULT_SESSIONS = 16
_PERIOD_AT_LINE_START = re.compile(rb"(?m)^\.")


@dataclass
class Outgoing:
    """One message to send; `key` names it in the commit and in the outcome (a delivery id)."""

    key: Hashable
    from_email: str
    to: str
    subject: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def data(self) -> bytes:
        """What follows DATA: the message, dot-stuffed, ending in CRLF, without the final dot."""
        raw = mime.message_bytes(
            from_email=self.from_email,
            to=self.to,
            subject=self.subject,
            body=self.body,
            headers=self.headers,
            date=formatdate(localtime=settings.EMAIL_USE_LOCALTIME),
        )
        return _PERIOD_AT_LINE_START.sub(b"..", raw)

    def email_message(self, connection) -> EmailMessage:
        return EmailMessage(
            subject=self.subject,
            body=self.body,
            from_email=self.from_email,
            to=[self.to],
            headers=self.headers,
            connection=connection,
        )


class _Session:
    """One SMTP connection, opened through Django's SMTP backend (host, port, TLS, login
    and timeout from the EMAIL_* settings)."""

    def __init__(self, backend: SMTPBackend):
        self.backend = backend
        self.smtp: smtplib.SMTP | None = None
        self.pipelining = False

    def open(self) -> None:
        if self.smtp is not None:
            return
        self.backend.open()
        smtp = self.backend.connection
        # The final dot goes in its own small write: without TCP_NODELAY, Nagle's algorithm
        # and the server's delayed ACK would hold it ~40 ms.
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        smtp.ehlo_or_helo_if_needed()
        self.pipelining = smtp.has_extn("pipelining")
        self.smtp = smtp

    def close(self) -> None:
        """Drop the connection without a word: a transaction in progress is abandoned (the
        server discards a message whose final dot never came). Not QUIT: in the middle of
        DATA it would be taken for more of the message."""
        self.smtp = None
        if self.backend.connection is not None:
            self.backend.connection.close()
            self.backend.connection = None

    def quit(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.smtp.quit()
        self.close()

    def write(self, data: bytes) -> None:
        self.smtp.send(data)

    def reply(self) -> tuple[int, bytes]:
        return self.smtp.getreply()


class _Transaction:
    """One message on one session, step by step; `error` ends it."""

    def __init__(self, message: Outgoing, session: _Session):
        self.message = message
        self.session = session
        self.error: Exception | None = None
        # Everything that could refuse this message's content fails here, before the session
        # is touched: commands and data are ASCII bytes from here on.
        self.mail = f"MAIL FROM:<{mime.envelope_address(message.from_email)}>\r\n".encode("ascii")
        self.rcpt = f"RCPT TO:<{mime.envelope_address(message.to)}>\r\n".encode("ascii")
        self.data = message.data()

    @property
    def alive(self) -> bool:
        return self.error is None

    def fail(self, error: Exception, *, reset: bool = False) -> None:
        self.error = error
        if isinstance(error, (OSError, smtplib.SMTPServerDisconnected)) or not reset:
            self.session.close()
            return
        try:
            self.session.smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.session.close()

    def expect(self, codes: tuple[int, ...], error: Callable[[int, bytes], Exception]) -> bool:
        """Read one reply; a code outside `codes` fails the transaction (the session is reset)."""
        try:
            code, reply = self.session.reply()
        except (OSError, smtplib.SMTPException) as exc:
            self.fail(exc)
            return False
        if code not in codes:
            self.fail(error(code, reply), reset=True)
            return False
        return True


class Mailer:
    """Sends batches of campaign messages through Django's email backend; for SMTP over up
    to `sessions` connections kept open between batches. Close it when done."""

    def __init__(self, *, sessions: int | None = None):
        self.size = max(1, sessions or getattr(settings, "CAMPAIGN_SMTP_SESSIONS", DEFAULT_SESSIONS))
        self.backend = get_connection()
        self.is_smtp = isinstance(self.backend, SMTPBackend)
        self.sessions: list[_Session] = []

    def __enter__(self) -> Mailer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for session in self.sessions:
            session.quit()
        if not self.is_smtp:
            self.backend.close()

    def send(
        self, messages: list[Outgoing], commit: Callable[[list[Hashable]], None]
    ) -> dict[Hashable, Exception | None]:
        """Send `messages`; `commit(keys)` runs once the server holds everything but the final
        dot of those messages. Returns each key's outcome: None (sent) or the error."""
        outcome: dict[Hashable, Exception | None] = {}
        if not self.is_smtp:
            commit([m.key for m in messages])
            for message in messages:
                try:
                    self.backend.send_messages([message.email_message(self.backend)])
                    outcome[message.key] = None
                except Exception as exc:  # noqa: BLE001 - the outcome of one message, recorded on its row
                    outcome[message.key] = exc
            return outcome
        while len(self.sessions) < min(self.size, len(messages)):
            self.sessions.append(_Session(get_connection(backend=settings.EMAIL_BACKEND)))
        for start in range(0, len(messages), self.size):
            group = messages[start : start + self.size]
            outcome.update(self._send_group(group, commit))
        return outcome

    def _send_group(self, group: list[Outgoing], commit) -> dict[Hashable, Exception | None]:
        outcome: dict[Hashable, Exception | None] = {}
        transactions = []
        for message, session in zip(group, self.sessions, strict=False):
            try:
                transactions.append(_Transaction(message, session))
            except Exception as exc:  # noqa: BLE001 - a message that cannot be written fails alone
                outcome[message.key] = exc
        for t in transactions:
            try:
                t.session.open()
            except (OSError, smtplib.SMTPException) as exc:
                t.fail(exc)
        self._envelope(transactions)
        ready = []
        for t in transactions:
            if t.alive:
                try:
                    t.session.write(t.data)
                    ready.append(t)
                except (OSError, smtplib.SMTPException) as exc:
                    t.fail(exc)
        if ready:
            try:
                commit([t.message.key for t in ready])
            except BaseException:
                for t in ready:  # no dots: the server discards these messages
                    t.session.close()
                raise
            for t in ready:
                try:
                    t.session.write(b".\r\n")
                except (OSError, smtplib.SMTPException) as exc:
                    t.fail(exc)
            for t in ready:
                if t.alive:
                    t.expect((250,), _refused("end of data"))
        outcome.update((t.message.key, t.error) for t in transactions)
        return outcome

    def _envelope(self, transactions: list[_Transaction]) -> None:
        """MAIL, RCPT, DATA on every session: each step written to all before any reply is
        read, or all three in one write where the server allows pipelining."""
        pipelined = [t for t in transactions if t.alive and t.session.pipelining]
        for t in pipelined:
            try:
                t.session.write(t.mail + t.rcpt + b"DATA\r\n")
            except (OSError, smtplib.SMTPException) as exc:
                t.fail(exc)
        for t in pipelined:
            if t.alive:
                _pipelined_replies(t)
        stepwise = [t for t in transactions if t.alive and not t.session.pipelining]
        steps = (
            ("mail", (250,), _refused("MAIL FROM")),
            ("rcpt", (250, 251), _refused("RCPT TO")),
            (None, (354,), _refused("DATA")),
        )
        for command, codes, error in steps:
            for t in stepwise:
                if t.alive:
                    try:
                        t.session.write(getattr(t, command) if command else b"DATA\r\n")
                    except (OSError, smtplib.SMTPException) as exc:
                        t.fail(exc)
            for t in stepwise:
                if t.alive:
                    t.expect(codes, error)


def _refused(command: str) -> Callable[[int, bytes], Exception]:
    """The error for a refusal of `command`, carrying the server's code and words."""

    def error(code: int, reply: bytes) -> Exception:
        return smtplib.SMTPResponseException(code, f"{command}: {reply.decode(errors='replace')}")

    return error


def _pipelined_replies(t: _Transaction) -> None:
    """The three replies to a pipelined MAIL, RCPT, DATA, all read whatever they say."""
    try:
        replies = [t.session.reply() for _ in range(3)]
    except (OSError, smtplib.SMTPException) as exc:
        t.fail(exc)
        return
    (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
    if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
        # DATA should have been refused; the message we do not want to send is abandoned.
        t.fail(smtplib.SMTPDataError(data_code, b"DATA accepted after a refusal"))
    elif mail_code != 250:
        t.fail(_refused("MAIL FROM")(mail_code, mail_reply), reset=True)
    elif rcpt_code not in (250, 251):
        t.fail(_refused("RCPT TO")(rcpt_code, rcpt_reply), reset=True)
    elif data_code != 354:
        t.fail(_refused("DATA")(data_code, data_reply), reset=True)
