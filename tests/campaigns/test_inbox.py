"""The member's inbox: own messages only, read state, the unread badge."""

import pytest
from django.urls import reverse

from campaigns.models import InboxMessage
from tests.rewards.test_portal import member_with_login


@pytest.fixture
def anna(program):
    return member_with_login(email="anna@example.com")


def test_inbox_lists_own_messages_newest_first_with_an_unread_badge(client, anna, program):
    bo = member_with_login(email="bo@example.com")
    InboxMessage.objects.create(customer=anna, subject="Double points this weekend", body="...")
    InboxMessage.objects.create(customer=anna, subject="Your birthday gift", body="...")
    InboxMessage.objects.create(customer=bo, subject="Not for Anna", body="...")
    client.force_login(anna.user)
    response = client.get(reverse("inbox"))
    subjects = [m.subject for m in response.context["page"].object_list]
    assert subjects == ["Your birthday gift", "Double points this weekend"]
    assert response.context["inbox_unread"] == 2
    assert "2 unread messages" in response.content.decode()


def test_opening_a_message_marks_it_read(client, anna):
    message = InboxMessage.objects.create(
        customer=anna,
        subject="Hi",
        body="Line one\nLine two",
        link_url="/me/rewards/",
        link_label="See rewards",
    )
    client.force_login(anna.user)
    body = client.get(reverse("inbox-message", args=[message.pk])).content.decode()
    assert "Line one<br>Line two" in body and 'href="/me/rewards/"' in body
    message.refresh_from_db()
    first_read = message.read_at
    assert first_read is not None
    client.get(reverse("inbox-message", args=[message.pk]))
    message.refresh_from_db()
    assert message.read_at == first_read


def test_another_members_message_is_404(client, anna, program):
    bo = member_with_login(email="bo@example.com")
    message = InboxMessage.objects.create(customer=bo, subject="Private", body="...")
    client.force_login(anna.user)
    assert client.get(reverse("inbox-message", args=[message.pk])).status_code == 404
    message.refresh_from_db()
    assert message.read_at is None


def test_inbox_needs_a_login(client, db):
    response = client.get(reverse("inbox"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
