"""Changes to teams and tokens. The API, the pages and the admin call these."""

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts import live
from accounts.models import ApiToken, Membership, Role, Team


def default_team(user: AbstractBaseUser) -> Team:
    """The team a launch without an explicit team goes to: the user's first team by
    name, or, for a user in no team yet, a personal team named after them (created here,
    with the user as its admin)."""
    membership = Membership.objects.filter(user=user).select_related("team").order_by("team__name").first()
    if membership is not None:
        return membership.team
    # Never join an existing team by its name: a team called like the user may be anyone's.
    name = user.get_username()
    if Team.objects.filter(name=name).exists():
        name = f"{name}-{user.pk}"
    with transaction.atomic():
        team = Team.objects.create(name=name)
        Membership.objects.create(user=user, team=team, role=Role.ADMIN)
    return team


# --- API tokens ------------------------------------------------------------------------------

# Secrets look like "ry_<40 url-safe characters>"; the first characters are kept in clear
# (`ApiToken.prefix`) so a user can tell their tokens apart in a list.
SECRET_PREFIX = "ry_"
SECRET_RANDOM_BYTES = 30
PREFIX_LENGTH = 10
# last_used_at is a hint for humans, not an audit log: writing it on every request would
# turn each read into a write, so it moves at most once per this interval.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRejected(Exception):
    """The presented secret does not authenticate anyone; the message says why."""


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A new named token for `user`. Returns the stored token and its secret, which is
    not stored anywhere and cannot be shown again."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)
    token = ApiToken.objects.create(user=user, name=name, prefix=secret[:PREFIX_LENGTH], digest=token_digest(secret))
    return token, secret


def revoke_token(token: ApiToken) -> ApiToken:
    """Revoke for good: the token's next API call answers 401 and its open websockets are
    closed (4401) once the revocation commits. Revoking twice keeps the first time."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        token_id = token.pk
        transaction.on_commit(lambda: live.close_token_sockets(token_id), robust=True)
    return token


def authenticate_token(secret: str) -> ApiToken:
    """The active token whose secret this is, with its user; raises TokenRejected saying
    why not (malformed, unknown, revoked, user deactivated). Stamps last_used_at."""
    if not secret or len(secret) > 200 or not secret.isascii() or not secret.isprintable() or " " in secret:
        raise TokenRejected("malformed token: expected the secret shown when the token was created")
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(secret)).first()
    if token is None:
        raise TokenRejected("invalid token: no such token")
    if token.revoked_at is not None:
        raise TokenRejected(f"token '{token.name}' ({token.prefix}…) was revoked")
    if not token.user.is_active:
        raise TokenRejected("the token's user is deactivated")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # A filtered update, not save(): two concurrent requests write at most once each
        # and never overwrite a revocation made meanwhile.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- team membership -------------------------------------------------------------------------


class LastAdminError(Exception):
    """The change would leave a team without an admin, so nobody could manage it."""


def add_member(team: Team, user: AbstractBaseUser, role: Role) -> Membership:
    """Add `user` to `team` with `role`; a user already in it gets the role instead."""
    membership, created = Membership.objects.get_or_create(team=team, user=user, defaults={"role": role})
    if not created:
        return change_role(membership, role)
    return membership


def change_role(membership: Membership, role: Role) -> Membership:
    with transaction.atomic():
        _lock_team(membership.team_id)
        if membership.role == Role.ADMIN and role != Role.ADMIN:
            _refuse_if_last_admin(membership, f"cannot make the last admin of '{membership.team}' a {role}")
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def remove_member(membership: Membership) -> None:
    with transaction.atomic():
        _lock_team(membership.team_id)
        if membership.role == Role.ADMIN:
            _refuse_if_last_admin(membership, f"cannot remove the last admin of '{membership.team}'")
        membership.delete()


def _lock_team(team_id: int) -> None:
    # Serialises membership changes of one team, so two admins demoting each other at
    # once cannot both pass the last-admin check.
    Team.objects.select_for_update().filter(pk=team_id).first()


def _refuse_if_last_admin(membership: Membership, message: str) -> None:
    other_admins = Membership.objects.filter(team_id=membership.team_id, role=Role.ADMIN).exclude(pk=membership.pk)
    if not other_admins.exists():
        raise LastAdminError(message + "; make someone else admin first")
