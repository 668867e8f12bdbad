"""Changes to teams and tokens. The API, the pages and the admin call these."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from accounts.models import Membership, Role, Team


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
