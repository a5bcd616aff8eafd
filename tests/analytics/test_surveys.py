"""Surveys: staff define an NPS or CSAT question; members answer it in the portal (the inbox
lists open surveys) or from a link in a campaign message, once; answers feed NPS and CSAT."""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.urls import reverse

from analytics import services
from analytics.models import Survey, SurveyResponse
from campaigns import delivery
from campaigns.models import InboxMessage
from campaigns.services import campaign_launch
from tests.factories import StaffFactory, campaign_make
from tests.rewards.test_portal import member_with_login


@pytest.fixture
def anna(program):
    return member_with_login(email="anna@example.com", language="en")


@pytest.fixture
def ben(program):
    return member_with_login(email="ben@example.com")


@pytest.fixture
def nps(db):
    return Survey.objects.create(
        name="Autumn NPS",
        kind=Survey.Kind.NPS,
        question="How likely are you to recommend us to a friend?",
        question_translations={"da": "Hvor sandsynligt er det, at du vil anbefale os til en ven?"},
    )


def answer_url(survey, customer=None):
    token = (
        services.survey_token_make(survey=survey, customer=customer)
        if customer
        else services.survey_portal_token(survey=survey)
    )
    return reverse("survey-answer", args=[token])


def test_the_inbox_lists_open_surveys_and_the_member_answers_once(client, anna, nps):
    client.force_login(anna.user)
    inbox = client.get(reverse("inbox")).content.decode()
    assert nps.question in inbox
    url = re.search(r'href="(/surveys/[^"]+)"', inbox).group(1)

    page = client.get(url)
    assert page.status_code == 200
    assert "0 = not at all likely, 10 = extremely likely" in page.content.decode()
    response = client.post(url, {"score": "9", "comment": "  Lovely buns  "}, follow=True)
    assert "Thank you for your answer!" in response.content.decode()
    answer = SurveyResponse.objects.get(survey=nps, customer=anna)
    assert (answer.score, answer.comment) == (9, "Lovely buns")

    # Answered: the page shows the answer, a second POST records nothing, the inbox stops asking.
    again = client.post(url, {"score": "2"})
    assert again.status_code == 200 and "You answered 9" in again.content.decode()
    assert SurveyResponse.objects.filter(survey=nps).count() == 1
    assert nps.question not in client.get(reverse("inbox")).content.decode()


def test_the_question_is_shown_in_the_members_language(client, anna, nps):
    anna.language = "da"
    anna.save(update_fields=["language"])
    client.force_login(anna.user)
    page = client.get(answer_url(nps, anna), HTTP_ACCEPT_LANGUAGE="da")
    assert "Hvor sandsynligt er det" in page.content.decode()


@pytest.mark.parametrize("score", ["11", "-1", "nine", ""])
def test_a_score_off_the_scale_gets_a_message_next_to_the_field(client, anna, nps, score):
    client.force_login(anna.user)
    response = client.post(answer_url(nps), {"score": score})
    assert response.status_code == 200
    assert 'class="errorlist"' in response.content.decode()
    assert not SurveyResponse.objects.exists()


def test_csat_takes_one_to_five(client, anna):
    csat = Survey.objects.create(name="Shop visit", kind=Survey.Kind.CSAT, question="How was your visit?")
    client.force_login(anna.user)
    assert "1 = very dissatisfied" in client.get(answer_url(csat)).content.decode()
    assert 'class="errorlist"' in client.post(answer_url(csat), {"score": "0"}).content.decode()
    client.post(answer_url(csat), {"score": "5"})
    assert SurveyResponse.objects.get(survey=csat).score == 5


def test_a_link_sent_to_another_member_is_refused(client, anna, ben, nps):
    client.force_login(ben.user)
    response = client.get(answer_url(nps, anna))
    assert response.status_code == 403
    assert client.post(answer_url(nps, anna), {"score": "10"}).status_code == 403
    assert not SurveyResponse.objects.exists()


def test_a_forged_link_is_404_and_anonymous_visitors_sign_in_first(client, anna, nps):
    url = answer_url(nps, anna)
    response = client.get(url)
    assert response.status_code == 302 and reverse("login") in response["Location"]
    client.force_login(anna.user)
    assert client.get(url[:-3] + "xyz/").status_code == 404


def test_a_closed_survey_takes_no_answers(client, anna, nps):
    nps.is_active = False
    nps.save()
    client.force_login(anna.user)
    response = client.post(answer_url(nps), {"score": "10"})
    assert "This survey is closed." in response.content.decode()
    assert not SurveyResponse.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_answers_at_once_record_one(program, nps):
    anna = member_with_login(email="anna@example.com")

    def answer(score):
        try:
            services.survey_answer(survey=nps, customer=anna, score=score)
            return "ok"
        except services.SurveyError:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(answer, range(8)))
    assert results.count("ok") == 1 and results.count("refused") == 7
    assert SurveyResponse.objects.filter(survey=nps).count() == 1


def test_a_campaign_sends_each_recipient_a_survey_link_of_their_own(client, anna, ben, nps, settings):
    settings.CAMPAIGN_QUIET_HOURS = (0, 0)
    campaign = campaign_make(
        name="How did we do?",
        channel="in_app",
        is_marketing=False,
        survey=nps,
        contents={"en": ("Two minutes?", "Tell us how we did: {{ survey_link }}")},
    )
    campaign_launch(campaign=campaign)
    delivery.dispatch()
    while delivery.deliveries_send()["claimed"]:
        pass
    message = InboxMessage.objects.get(customer=anna)
    link = re.search(r"https?://\S+", message.body).group(0)
    path = link.split("://", 1)[1].split("/", 1)[1]
    client.force_login(anna.user)
    follow = client.get("/" + path, follow=True)  # through the click tracker, if any
    assert follow.status_code == 200 and nps.question in follow.content.decode()
    client.post(follow.redirect_chain[-1][0] if follow.redirect_chain else "/" + path, {"score": "10"})
    assert SurveyResponse.objects.get(survey=nps).customer == anna
    # Ben's message carries Ben's link: Anna cannot answer with it.
    ben_link = re.search(r"https?://\S+", InboxMessage.objects.get(customer=ben).body).group(0)
    assert ben_link != link


def test_answers_feed_nps_in_the_admin_and_the_share_link_works(client, program, nps):
    members = [member_with_login(email=f"m{i}@example.com") for i in range(4)]
    for member, score in zip(members, [10, 9, 7, 3], strict=True):
        services.survey_answer(survey=nps, customer=member, score=score)
    staff = StaffFactory(is_superuser=True)
    client.force_login(staff)
    changelist = client.get(reverse("admin:analytics_survey_changelist")).content.decode()
    assert "NPS +25" in changelist  # 2 promoters − 1 detractor of 4 answers
    change = client.get(reverse("admin:analytics_survey_change", args=[nps.pk])).content.decode()
    assert "4 answers" in change
    link = re.search(r'href="https?://[^/]+(/surveys/[^"]+)"', change).group(1)
    client.force_login(members[0].user)
    assert "You answered 10" in client.get(link).content.decode()


def test_staff_add_a_survey_with_its_translations(client, db):
    staff = StaffFactory(is_superuser=True)
    client.force_login(staff)
    response = client.post(
        reverse("admin:analytics_survey_add"),
        {
            "name": "Checkout CSAT",
            "kind": "csat",
            "question": "How was paying today?",
            "is_active": "on",
            "question_da": "Hvordan gik betalingen i dag?",
            "question_th": "การชำระเงินวันนี้เป็นอย่างไรบ้าง",
            "responses-TOTAL_FORMS": "0",
            "responses-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    survey = Survey.objects.get(name="Checkout CSAT")
    assert survey.question_in("da") == "Hvordan gik betalingen i dag?"
    assert survey.question_in("sv") == "How was paying today?"
