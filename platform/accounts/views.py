"""The API tokens page (under the user's name in the top bar): make a named token, whose
secret is shown once, in the answer to the POST that made it; list them with their prefix,
when made and last used; revoke one. Through the same services as /api/tokens/."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts import services
from accounts.models import ApiToken


class NewTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name"]
        help_texts = {"name": "what it is for (a laptop, a CI job), to tell your tokens apart"}


@login_required
def token_page(request: HttpRequest) -> HttpResponse:
    """GET: the user's tokens. POST {name}: a new token; the page answers with its secret
    (rendered, not redirected, so the secret never lands in a session or a message)."""
    form = NewTokenForm(request.POST if request.method == "POST" else None)
    created = secret = None
    if form.is_valid():
        created, secret = services.create_token(request.user, form.cleaned_data["name"])
        form = NewTokenForm()
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at", "-id")
    context = {"form": form, "tokens": tokens, "created": created, "secret": secret}
    return render(request, "accounts/tokens.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    # Another user's token is a 404, like a missing one (as in the API).
    token = ApiToken.objects.filter(user=request.user, pk=token_id).first()
    if token is None:
        raise Http404("no such token")
    services.revoke_token(token)
    messages.success(request, f"Token '{token.name}' ({token.prefix}…) revoked: it no longer authenticates.")
    return redirect("accounts:tokens")
