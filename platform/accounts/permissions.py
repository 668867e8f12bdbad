"""Who may see and do what: the one place for the rules, used by every app.

Everything a user can see belongs to a team; what they may do follows from their role in
it (roles are ordered, each may do what the ones below may):

- viewer: read the team's runs, datasets, presets;
- member: also launch runs, and change or cancel their own;
- admin:  also cancel anyone's run in the team, and manage the team's members.

Site staff (`is_staff`) may do everything everywhere. Objects of teams the user is not in
are invisible: querysets go through `visible_to`, so another team's object answers 404
exactly like a missing one and its existence never leaks.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Model, QuerySet

from accounts.models import Membership, Role, Team
from rollyard.params import whole_number

User = AbstractBaseUser | AnonymousUser


class PermissionDenied(DjangoPermissionDenied):
    """The user may see the object but their role does not allow the action. A subclass
    of Django's, so pages answer 403 and the API's error handler answers 403 with its
    message."""


def roles_at_least(min_role: Role) -> list[str]:
    """The role values ranked `min_role` or above (for `role__in` filters)."""
    return [role.value for role in Role if role.rank >= Role(min_role).rank]


def teams_of(user: User, min_role: Role = Role.VIEWER) -> QuerySet[Team]:
    """The teams where the user holds at least `min_role`; every team for staff."""
    if not user.is_authenticated:
        return Team.objects.none()
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(
        memberships__user=user, memberships__role__in=roles_at_least(min_role)
    ).distinct()


def role_in(user: User, team: Team) -> Role | None:
    """The user's role in the team, None when they are not a member (staff included:
    staff rights come from `is_staff`, not from a role)."""
    if not user.is_authenticated:
        return None
    role = Membership.objects.filter(user=user, team=team).values_list("role", flat=True).first()
    return Role(role) if role is not None else None


def has_role(user: User, team: Team, min_role: Role) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    role = role_in(user, team)
    return role is not None and role.rank >= Role(min_role).rank


def require_role(user: User, team: Team, min_role: Role, action: str = "do this") -> None:
    """Raise PermissionDenied naming the role needed and the team unless the user holds
    at least `min_role` in `team` (or is staff)."""
    if has_role(user, team, min_role):
        return
    role = role_in(user, team)
    held = f"you are a {role.label.lower()}" if role is not None else "you are not a member"
    needed = Role(min_role).label.lower()
    raise PermissionDenied(f"to {action} in team '{team.name}' you need the {needed} role or above; {held}")


def require_owner_or_admin(user: User, team: Team, owner_id: int | None, action: str = "change this") -> None:
    """Members may change what they own; team admins (and staff) may change anything of
    the team. Viewers change nothing."""
    if user.is_authenticated and owner_id == user.pk and has_role(user, team, Role.MEMBER):
        return
    if has_role(user, team, Role.ADMIN):
        return
    role = role_in(user, team)
    if role is not None and role.rank >= Role.MEMBER.rank:
        raise PermissionDenied(f"to {action} you need to own it or be an admin of team '{team.name}'")
    require_role(user, team, Role.MEMBER, action)  # raises, naming the member role


def visible_to(user: User, queryset: QuerySet[Model], team_field: str = "team") -> QuerySet[Model]:
    """The part of `queryset` the user may see: objects of their teams (all for staff,
    none for anonymous users). `team_field` is the lookup path to the object's team,
    e.g. "run__team" for objects that hang off a run."""
    if not user.is_authenticated:
        return queryset.none()
    if user.is_staff:
        return queryset
    # The ids, read first (one indexed query), not a subquery: with one team's id as a
    # constant PostgreSQL reads the (team, created_at, id) index in order and stops at a
    # page; with a subquery it walks every team's runs newest first, checking each against
    # the user's teams, so a small team's page costs in proportion to all runs
    # (bench.list_visibility: 1.7 → 0.12 ms for 2,000 of 200,000).
    member_of = list(Membership.objects.filter(user=user).values_list("team_id", flat=True))
    return queryset.filter(**{f"{team_field}__in": member_of})


def find_team(user: User, id_or_name: str) -> Team | None:
    """The team with this id or name among the user's teams (staff: any team); None
    when there is none, whether it does not exist or is another team's."""
    id_or_name = id_or_name.strip()
    teams = teams_of(user)
    # Digits may still be a team's name. whole_number: ASCII digits that fit an id ('²'
    # is a digit to isdigit() but not to int()).
    if (team_id := whole_number(id_or_name)) is not None:
        team = teams.filter(pk=team_id).first()
        if team is not None:
            return team
    return teams.filter(name=id_or_name).first()
