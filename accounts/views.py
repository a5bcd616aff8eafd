"""The portal's account pages: sign in and out, password reset, profile, consent, closure."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import check_for_language
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from .decorators import customer_required
from .forms import EmailAuthenticationForm, MemberPasswordResetForm, ProfileForm
from .middleware import member_customer
from .models import Customer
from .security import Limit, client_ip, rate_limits_hit
from .services import (
    CONFIRMATION_NOT_SENT,
    confirmation_email_send,
    confirmation_token_make,
    customer_closure_request,
    customer_consent_set,
)


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    template_name = "accounts/logged_out.html"


# Mail we send on request: a few per address and per network each hour, so the forms cannot
# be used to flood someone's inbox or to probe addresses quickly. Counted whether or not the
# address has an account (the answer must not tell).
PASSWORD_RESET_PER_ADDRESS = Limit("password-reset:address", 5, 3600)
PASSWORD_RESET_PER_IP = Limit("password-reset:ip", 20, 3600)
CONFIRMATION_RESEND_PER_LOGIN = Limit("confirmation-resend:login", 5, 3600)
CONFIRMATION_RESEND_PER_IP = Limit("confirmation-resend:ip", 20, 3600)


def _too_many(response, wait: int):
    response["Retry-After"] = str(wait)
    return response


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    form_class = MemberPasswordResetForm
    email_template_name = "accounts/email/password_reset_body.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("password_reset_done")

    @property
    def extra_email_context(self):
        return {"PROGRAM_NAME": settings.PROGRAM_NAME}

    def form_valid(self, form):
        wait = rate_limits_hit(
            (PASSWORD_RESET_PER_ADDRESS, form.cleaned_data["email"]),
            (PASSWORD_RESET_PER_IP, client_ip(self.request)),
        )
        if wait is None:
            return super().form_valid(form)
        form.add_error(
            None,
            _(
                "Too many reset requests for this address or from your network. Please try again "
                "in an hour; a link we have already sent still works."
            ),
        )
        return _too_many(self.render_to_response(self.get_context_data(form=form), status=429), wait)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


@customer_required
def profile(request):
    customer = request.customer
    consent_before = customer.marketing_consent
    if request.method == "POST":
        form = ProfileForm(request.POST, instance=customer)
        if form.is_valid():
            consent = form.cleaned_data["marketing_consent"]
            saved = form.save(commit=False)
            saved.marketing_consent = consent_before
            saved.save()
            customer_consent_set(customer=saved, consent=consent)
            messages.success(request, _("Your profile is saved."))
            return redirect("profile")
    else:
        form = ProfileForm(instance=customer)
    return render(request, "accounts/profile.html", {"form": form, "customer": customer})


@require_POST
@customer_required
def consent_withdraw(request):
    """One click, no questions: no more marketing messages."""
    customer_consent_set(customer=request.customer, consent=False)
    messages.success(request, _("Done: we will not send you marketing messages any more."))
    return redirect("profile")


@customer_required
def closure_request(request):
    customer = request.customer
    if request.method == "POST":
        customer_closure_request(customer=customer)
        messages.success(request, _("We have your request and will close your account within 30 days."))
        return redirect("profile")
    return render(request, "accounts/close_account.html", {"customer": customer})


@require_POST
@login_required
def confirmation_resend(request):
    user = request.user
    if user.email_confirmed_at is None:
        wait = rate_limits_hit(
            (CONFIRMATION_RESEND_PER_LOGIN, str(user.pk)), (CONFIRMATION_RESEND_PER_IP, client_ip(request))
        )
        if wait is not None:
            message = _(
                "We have sent several confirmation links already. Please look for them in your inbox "
                "(and the spam folder), or ask for a new one in an hour."
            )
            response = render(request, "accounts/too_many_requests.html", {"message": message}, status=429)
            return _too_many(response, wait)
        customer = member_customer(request)
        token = confirmation_token_make(user=user)
        sent = confirmation_email_send(
            request=request, user=user, token=token, language=customer.language if customer else None
        )
        if sent:
            messages.success(
                request, _("We sent a new confirmation link to %(email)s.") % {"email": user.email}
            )
        else:
            messages.warning(
                request,
                CONFIRMATION_NOT_SENT,
            )
    # Back to the page the button was on; never to another site (an open redirect).
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = "portal-home"
    return redirect(target)


@require_POST
def language_set(request):
    """The header's language switcher: Django's set_language, and for a signed-in member
    the profile's language too (the profile wins on later visits)."""
    response = set_language(request)
    code = request.POST.get("language", "")
    customer = member_customer(request)
    if (
        customer is not None
        and check_for_language(code)
        and code in dict(Customer._meta.get_field("language").choices)
    ):
        Customer.objects.filter(pk=customer.pk).update(language=code)
    return response
