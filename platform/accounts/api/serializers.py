"""Shapes of users, teams, memberships and tokens on the wire."""

from django.contrib.auth import get_user_model
from rest_framework import serializers

from accounts.models import ApiToken, Membership, Role, Team
from rollyard.params import whole_number


class TeamSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="your role in the team; null when you are staff, not a member")

    class Meta:
        model = Team
        fields = ["id", "name", "created_at", "role"]
        read_only_fields = ["id", "created_at", "role"]

    def get_role(self, team: Team) -> str | None:
        # Set by the view's queryset annotation: one query for the whole list.
        return getattr(team, "my_role", None)


class MembershipSerializer(serializers.ModelSerializer):
    user_id = serializers.IntegerField(source="user.pk", read_only=True)
    username = serializers.CharField(source="user.get_username", read_only=True)

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "joined_at"]
        read_only_fields = fields


class MemberAddSerializer(serializers.Serializer):
    user = serializers.CharField(max_length=150, help_text="the user's id or username")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    def validate_user(self, value: str):
        users = get_user_model().objects.filter(is_active=True)
        user_id = whole_number(value)  # not isdigit(): '²' is a digit to it but not to int()
        user = users.filter(pk=user_id).first() if user_id is not None else None
        user = user or users.filter(username=value).first()
        if user is None:
            raise serializers.ValidationError(f"no active user '{value}'")
        return user


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()
    is_staff = serializers.BooleanField()
    teams = TeamSerializer(many=True)


class ApiTokenSerializer(serializers.ModelSerializer):
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at", "active"]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at", "active"]


class NewApiTokenSerializer(ApiTokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="shown only in this answer; store it now")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "secret"]
        read_only_fields = [*ApiTokenSerializer.Meta.read_only_fields, "secret"]
