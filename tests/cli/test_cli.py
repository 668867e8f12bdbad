"""`rollyard runs ...` against a real served stack (Daphne and a Celery worker on the
test database): the CLI talks HTTP to it with a real API token."""

import os
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from typer.testing import CliRunner

from accounts.models import Role, Team
from accounts.services import add_member, create_token
from rollyard_cli.app import app
from runs.models import Alert, AlertKind, AlertRule, Run, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

# Two steps, in-process: the worker finishes it in seconds.
TINY_SPEC = """\
name: tiny
training: {steps: 2, eval_every: 0}
rollout: {prompts_per_step: 2, n: 2, max_new_tokens: 16}
dataset: {eval_size: 4}
resources: {executor: inprocess}
"""


@pytest.fixture
def alice_secret() -> str:
    alice = get_user_model().objects.create_user("alice", password="pw")
    add_member(Team.objects.create(name="ml"), alice, Role.MEMBER)
    return create_token(alice, "cli")[1]


@pytest.fixture
def rollyard(live_stack, alice_secret):
    """Run `rollyard <args>` in-process against the live stack as alice."""
    runner = CliRunner()

    def invoke(*args: str, token: str | None = alice_secret):
        env = {"ROLLYARD_URL": live_stack.base_url, "ROLLYARD_TOKEN": token or ""}
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


def launched_id(output: str) -> int:
    return int(output.split("launched run #", 1)[1].split()[0])


def test_launch_follow_the_logs_to_the_end_then_show_and_list(rollyard, spec_file, live_stack):
    launched = rollyard("runs", "launch", str(spec_file), "--team", "ml", "--name", "cli run")
    assert launched.exit_code == 0, launched.output
    run_id = launched_id(launched.output)
    assert "in team ml" in launched.output

    followed = rollyard("runs", "logs", str(run_id), "--follow", "--poll-seconds", "0.5")
    assert followed.exit_code == 0, followed.output + live_stack.logs()
    assert "status running" in followed.output
    assert "status succeeded" in followed.output.splitlines()[-1]

    shown = rollyard("runs", "show", str(run_id))
    assert shown.exit_code == 0, shown.output
    assert "cli run" in shown.output and "succeeded" in shown.output and "2/2 steps" in shown.output
    assert "reward/mean" in shown.output  # the latest metrics

    listed = rollyard("runs", "list", "--team", "ml", "--status", "succeeded")
    assert listed.exit_code == 0, listed.output
    assert f"│ {run_id} " in listed.output and "cli run" in listed.output
    assert "cli run" not in rollyard("runs", "list", "--status", "running").output


def test_cancel_a_queued_run_then_cancelling_again_is_a_conflict(rollyard, spec_file, live_stack):
    # Usually still queued, so cancelled at once; a worker may claim it first, and then
    # the cancel asks it to stop between steps. Both are a successful cancel.
    run_id = launched_id(rollyard("runs", "launch", str(spec_file)).output)

    cancelled = rollyard("runs", "cancel", str(run_id))
    assert cancelled.exit_code == 0, cancelled.output
    assert f"run #{run_id}" in cancelled.output
    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled" or run.cancel_requested
    if "cancelled" in cancelled.output:
        again = rollyard("runs", "cancel", str(run_id))
        assert again.exit_code == 7
        assert "409" in again.output and "cancelled already" in again.output


def test_an_invalid_spec_is_listed_field_by_field_and_nothing_runs(rollyard, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: {n: 0}\ntrainig: {steps: 3}\n")

    result = rollyard("runs", "launch", str(bad))

    assert result.exit_code == 6
    lines = result.output.splitlines()
    assert any(line.strip().startswith("rollout.n:") for line in lines), result.output
    assert any(line.strip().startswith("trainig:") for line in lines), result.output
    assert Run.objects.count() == 0


def test_a_bad_token_a_missing_run_and_a_foreign_team_give_distinct_exit_codes(rollyard, spec_file):
    unauthenticated = rollyard("runs", "list", token="ry_not-a-real-token")
    assert unauthenticated.exit_code == 3
    assert "401" in unauthenticated.output and "ROLLYARD_TOKEN" in unauthenticated.output

    bob = get_user_model().objects.create_user("bob", password="pw")
    bobs_run_id = launched_id(rollyard("runs", "launch", str(spec_file), token=create_token(bob, "cli")[1]).output)
    for args in (("show", str(bobs_run_id)), ("cancel", str(bobs_run_id)), ("show", "999999")):
        result = rollyard("runs", *args)
        assert result.exit_code == 5, (args, result.output)
        assert "404" in result.output

    not_my_team = rollyard("runs", "launch", str(spec_file), "--team", "bob")
    assert not_my_team.exit_code == 6
    assert "team: no team 'bob' among yours" in not_my_team.output


def stored_run(owner_name: str, team_name: str) -> Run:
    """A finished run stored directly: the alert commands need no worker."""
    owner = get_user_model().objects.get(username=owner_name)
    team = Team.objects.get(name=team_name)
    return Run.objects.create(owner=owner, team=team, name="watched", spec={}, status=RunStatus.SUCCEEDED, total_steps=2)


def test_add_list_and_remove_an_alert_rule(rollyard, live_stack):
    run = stored_run("alice", "ml")

    added = rollyard("runs", "alert-rule", "add", str(run.pk), "--metric", "val/acc/mean@1", "--below", "0.6",
                     "--consecutive", "2", "--email", "lead@example.com")  # fmt: skip
    assert added.exit_code == 0, added.output + live_stack.logs()
    rule = AlertRule.objects.get(run=run)
    assert (rule.metric, rule.comparison, rule.threshold, rule.consecutive, rule.emails) == (
        "val/acc/mean@1", "below", 0.6, 2, ["lead@example.com"])
    assert f"added rule #{rule.pk} to run #{run.pk}: val/acc/mean@1 below 0.6 for 2 steps" in added.output
    Alert.objects.create(run=run, kind=AlertKind.METRIC, rule=rule, message="accuracy fell to 0.41")

    listed = rollyard("runs", "alerts", str(run.pk))
    assert listed.exit_code == 0, listed.output
    assert "val/acc/mean@1" in listed.output and "below 0.6" in listed.output and "lead@example.com" in listed.output
    assert "alerting" in listed.output  # the rule's open alert
    [alert] = Alert.objects.filter(run=run)
    assert f"alert #{alert.pk} " in listed.output
    assert f"metric (rule #{rule.pk}), open: accuracy fell to 0.41" in listed.output

    removed = rollyard("runs", "alert-rule", "remove", str(run.pk), str(rule.pk))
    assert removed.exit_code == 0, removed.output
    assert f"removed rule #{rule.pk} from run #{run.pk}" in removed.output
    assert not AlertRule.objects.filter(pk=rule.pk).exists()
    assert Alert.objects.get(run=run).resolved_at is not None  # its open alert resolved, kept
    listed = rollyard("runs", "alerts", str(run.pk))
    assert "has no alert rules" in listed.output
    assert ", resolved " in listed.output and "accuracy fell to 0.41" in listed.output

    gone = rollyard("runs", "alert-rule", "remove", str(run.pk), str(rule.pk))
    assert gone.exit_code == 5 and f"run #{run.pk} has no alert rule #{rule.pk}" in gone.output


def test_a_bad_rule_is_listed_field_by_field_and_a_viewer_is_forbidden(rollyard, alice_secret):
    run = stored_run("alice", "ml")

    bad = rollyard("runs", "alert-rule", "add", str(run.pk), "--metric", "no/such", "--above", "1",
                   "--consecutive", "0", "--email", "not-an-address")  # fmt: skip
    assert bad.exit_code == 6, bad.output
    lines = [line.strip() for line in bad.output.splitlines()]
    assert any(line.startswith("metric: 'no/such' is not a metric") for line in lines), bad.output
    assert any(line.startswith("consecutive:") for line in lines), bad.output
    assert any(line.startswith("emails: 'not-an-address'") for line in lines), bad.output

    neither = rollyard("runs", "alert-rule", "add", str(run.pk), "--metric", "reward/mean")
    both = rollyard("runs", "alert-rule", "add", str(run.pk), "--metric", "reward/mean", "--above", "1", "--below", "0")
    for result in (neither, both):
        assert result.exit_code == 2 and "exactly one of --above or --below" in result.output

    viewer = get_user_model().objects.create_user("vic", password="pw")
    add_member(Team.objects.get(name="ml"), viewer, Role.VIEWER)
    as_viewer = rollyard("runs", "alert-rule", "add", str(run.pk), "--metric", "reward/mean", "--below", "0.1",
                         token=create_token(viewer, "cli")[1])  # fmt: skip
    assert as_viewer.exit_code == 4 and "403" in as_viewer.output
    assert rollyard("runs", "alerts", str(run.pk), token=create_token(viewer, "cli")[1]).exit_code == 0
    assert not AlertRule.objects.filter(run=run).exists()


def test_an_unreachable_server_is_named(alice_secret):
    result = CliRunner().invoke(app, ["runs", "list", "--url", "http://127.0.0.1:9", "--token", alice_secret])
    assert result.exit_code == 8
    assert "cannot reach Rollyard at http://127.0.0.1:9" in result.output


def test_the_installed_rollyard_command_lists_runs(live_stack, alice_secret):
    env = dict(os.environ, ROLLYARD_URL=live_stack.base_url, ROLLYARD_TOKEN=alice_secret)
    command = [os.path.join(os.path.dirname(sys.executable), "rollyard"), "runs", "list"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout and "progress" in result.stdout


def test_rollyard_demo_is_still_a_command():
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.output
