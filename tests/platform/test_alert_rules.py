"""Metric-threshold alert rules and the delivery of alerts by email.

Rules are set at launch or added through the API, checked by the service (each bad field
named), evaluated by the reconciler's sweep from the points a run reported, and each alert
is mailed through Django's real SMTP backend to a real SMTP server on 127.0.0.1 (a small
one written here: the standard library has none since Python 3.12)."""

import email
import email.policy
import json
import socketserver
import threading

import pytest

from engine.events import ListSink, Metrics
from engine.orchestration import run as engine_run
from engine.spec import parse_spec
from django.test import Client
from django.utils.html import escape

from runs import alerts, launch
from runs.models import Alert, AlertRule, Run, RunStatus
from runs.reconciler import reconcile_runs

pytestmark = pytest.mark.django_db

ACC = "val/acc/mean@1"


@pytest.fixture
def sweep(django_capture_on_commit_callbacks):
    """The reconciler's sweep, its after-commit side effects run."""

    def run_sweep():
        with django_capture_on_commit_callbacks(execute=True):
            return reconcile_runs()

    return run_sweep


@pytest.fixture
def report(record):
    """report(run, {step: value}): the run's driver reports ACC at those steps."""

    def report_values(run, values: dict[int, float], name: str = ACC) -> None:
        record(run.pk, [Metrics(step=step, values={name: value}) for step, value in values.items()])

    return report_values


@pytest.fixture
def alerting(alice, make_run, report, sweep) -> tuple:
    """(run, rule, alert): alice's running run whose rule (ACC below 0.5) alerts at step 1."""
    run = make_run(alice, status=RunStatus.RUNNING)
    rule = rule_on(run, alice)
    report(run, {1: 0.2})
    sweep()
    return run, rule, Alert.objects.get(rule=rule)


@pytest.fixture
def browser_alice(alice) -> Client:
    browser = Client()
    browser.force_login(alice)
    return browser


def rule_on(run, user, **fields) -> AlertRule:
    return alerts.add_rule(user, run, {"metric": ACC, "comparison": "below", "threshold": 0.5, **fields})


def open_alerts(rule: AlertRule) -> list[Alert]:
    return list(Alert.objects.filter(rule=rule, resolved_at__isnull=True))


# --- rules through the API: who may, and what is refused -------------------------------------------


def test_the_owner_adds_a_rule_and_everyone_in_the_team_reads_it(teams, make_run):
    run = make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)
    body = {"metric": ACC, "comparison": "below", "threshold": 0.6, "consecutive": 3, "emails": ["lead@example.com"]}

    created = teams.client(teams.member).post(f"/api/runs/{run.pk}/alert-rules/", body, format="json")

    assert created.status_code == 201, created.json()
    assert created.json() | body == created.json()  # what was asked, as asked
    assert created.json()["created_by"] == "max" and created.json()["open_alert"] is None
    listed = teams.client(teams.viewer).get(f"/api/runs/{run.pk}/alert-rules/")
    assert [rule["id"] for rule in listed.json()] == [created.json()["id"]]


@pytest.mark.parametrize(
    ("who", "expected"), [("viewer", 403), ("member", 201), ("admin", 201), ("outsider", 404)]
)
def test_who_may_add_a_rule_to_a_run(teams, make_run, who, expected):
    # The run is the admin's: a member may change only their own runs, a team admin any.
    run = make_run(teams.admin, status=RunStatus.RUNNING, team=teams.team)
    own = make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)
    target = own if who == "member" else run
    body = {"metric": ACC, "comparison": "above", "threshold": 0.9}

    response = teams.client(getattr(teams, who)).post(f"/api/runs/{target.pk}/alert-rules/", body, format="json")

    assert response.status_code == expected
    if expected == 403:
        assert "viewer" in response.json()["error"]["message"]
    assert AlertRule.objects.count() == (1 if expected == 201 else 0)


def test_a_member_may_not_add_a_rule_to_someone_elses_run(teams, make_run, error_of):
    run = make_run(teams.admin, status=RunStatus.RUNNING, team=teams.team)
    body = {"metric": ACC, "comparison": "above", "threshold": 0.9}

    response = teams.client(teams.member).post(f"/api/runs/{run.pk}/alert-rules/", body, format="json")

    assert response.status_code == 403
    assert f"change run #{run.pk}" in error_of(response)["message"]


def test_a_bad_rule_is_refused_naming_each_field(api_alice, alice, make_run, error_of):
    run = make_run(alice, status=RunStatus.RUNNING)
    # 1e400 is valid JSON and parses to infinity: the one way a non-finite number arrives.
    raw = '{"metric": "val/accuracy", "comparison": "sideways", "threshold": 1e400, "consecutive": 0, "colour": 1}'

    response = api_alice.post(f"/api/runs/{run.pk}/alert-rules/", raw, content_type="application/json")

    assert response.status_code == 400
    fields = error_of(response)["fields"]
    assert set(fields) == {"metric", "comparison", "threshold", "consecutive", "colour"}
    assert "'val/accuracy' is not a metric the engine reports" in fields["metric"][0]
    assert "unknown comparison 'sideways'; one of above, below" in fields["comparison"][0]
    assert "must be a finite number, got inf" in fields["threshold"][0]
    assert "from 1 to" in fields["consecutive"][0] and "unknown field" in fields["colour"][0]
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"threshold": float("nan")}, "threshold", "must be a finite number, got nan"),
        ({"threshold": "0.5"}, "threshold", "required: a number"),
        ({"threshold": True}, "threshold", "required: a number"),
        ({"metric": ""}, "metric", "required: a metric name"),
        ({"emails": ["not-an-address"]}, "emails", "'not-an-address' is not an email address"),
        ({"emails": "lead@example.com"}, "emails", "must be a list"),
    ],
)
def test_the_service_names_each_problem(data, field, reason):
    with pytest.raises(alerts.InvalidRule) as refused:
        alerts.check_rule({"metric": ACC, "comparison": "below", "threshold": 0.5, **data})
    assert refused.value.problems == [(field, refused.value.problems[0][1])]
    assert reason in refused.value.problems[0][1]


@pytest.mark.parametrize("metric", ["val/pass@4", "gpu/0/utilization", "rollout/response_length/max", "actor/entropy"])
def test_documented_names_are_metric_names_with_their_placeholders_filled(metric):
    assert alerts.check_rule({"metric": metric, "comparison": "above", "threshold": 1})["metric"] == metric


@pytest.mark.parametrize("metric", ["val/pass@", "gpu/0/1/utilization", "actor/entropy/", "Actor/entropy"])
def test_near_misses_are_not_metric_names(metric):
    assert not alerts.is_metric_name(metric)


def test_rules_set_at_launch_are_stored_with_the_run(api_alice, alice):
    rules = [
        {"metric": ACC, "comparison": "below", "threshold": 0.5, "consecutive": 2},
        {"metric": "rollout/response_length/max", "comparison": "above", "threshold": 4000},
    ]
    response = api_alice.post("/api/runs/", {"spec": {"training": {"steps": 5}}, "alert_rules": rules}, format="json")

    assert response.status_code == 201, response.json()
    stored = AlertRule.objects.filter(run_id=response.json()["id"]).order_by("id")
    assert [(rule.metric, rule.comparison, rule.threshold, rule.consecutive) for rule in stored] == [
        (ACC, "below", 0.5, 2),
        ("rollout/response_length/max", "above", 4000.0, 1),
    ]
    assert all(rule.created_by == alice for rule in stored)


def test_a_clone_launches_with_the_runs_rules(api_alice):
    rules = [{"metric": "actor/entropy", "comparison": "below", "threshold": 0.05, "consecutive": 4, "emails": []}]
    first = api_alice.post("/api/runs/", {"spec": {}, "alert_rules": rules}, format="json").json()

    clone = api_alice.get(f"/api/runs/{first['id']}/clone/").json()
    assert clone["alert_rules"] == rules
    again = api_alice.post("/api/runs/", clone, format="json")

    assert again.status_code == 201, again.json()
    assert [alerts.rule_fields(rule) for rule in AlertRule.objects.filter(run_id=again.json()["id"])] == rules


def test_a_launch_with_a_bad_rule_stores_nothing(api_alice, error_of):
    rules = [
        {"metric": ACC, "comparison": "below", "threshold": 0.5},
        {"metric": ACC, "comparison": "under", "threshold": 1},
    ]
    response = api_alice.post("/api/runs/", {"spec": {}, "alert_rules": rules}, format="json")

    assert response.status_code == 400
    assert list(error_of(response)["fields"]) == ["alert_rules.1.comparison"]
    assert not AlertRule.objects.exists()


def test_deleting_a_rule_resolves_its_open_alert_and_keeps_its_history(api_alice, alerting):
    run, rule, alert = alerting

    assert api_alice.delete(f"/api/runs/{run.pk}/alert-rules/{rule.pk}/").status_code == 204

    assert not AlertRule.objects.exists()
    alert.refresh_from_db()
    assert alert.resolved_at is not None and alert.rule is None and alert.kind == "metric"
    assert api_alice.delete(f"/api/runs/{run.pk}/alert-rules/{rule.pk}/").status_code == 404


# --- evaluation in the sweep ---------------------------------------------------------------------


def test_an_alert_opens_after_the_consecutive_steps_holds_once_and_resolves_when_the_metric_comes_back(
    alice, make_run, report, sweep
):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule = rule_on(run, alice, consecutive=3)

    # Steps 2 and 3 are below 0.5, step 4 is not: two in a row, no alert. 0.5 itself is not below.
    report(run, {1: 0.7, 2: 0.4, 3: 0.45, 4: 0.5})
    assert sweep().alerts_opened == []
    # Steps 5, 6 and 7 below: three in a row, the alert opens at step 7.
    report(run, {5: 0.3, 6: 0.35, 7: 0.2})
    assert sweep().alerts_opened == [f"{run.pk}:metric"]
    [alert] = open_alerts(rule)
    assert alert.message == f"run #{run.pk} run: {ACC} below 0.5 for 3 reported steps in a row (0.2 at step 7)"
    # Still below at step 8: the same alert, no second one.
    report(run, {8: 0.1})
    assert sweep().alerts_opened == []
    assert open_alerts(rule) == [alert]
    # Back above at step 9: resolved.
    report(run, {9: 0.8})
    sweep()
    assert open_alerts(rule) == []
    assert Alert.objects.get(pk=alert.pk).resolved_at is not None


def test_episodes_between_two_sweeps_are_each_seen(alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule = rule_on(run, alice)
    # Below at 1, back at 2, below again at 3 and still at 4: two alerts, the first resolved.
    report(run, {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3})

    sweep()

    first, second = Alert.objects.filter(rule=rule).order_by("id")
    assert first.resolved_at is not None and "(0.1 at step 1)" in first.message
    assert second.resolved_at is None and "(0.2 at step 3)" in second.message
    assert AlertRule.objects.get(pk=rule.pk).checked_step == 4


def test_non_finite_points_are_skipped(alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule = rule_on(run, alice, consecutive=2)
    # NaN at step 2 is stored as null: steps 1 and 3 are the two in a row.
    report(run, {1: 0.1, 2: float("nan"), 3: 0.2})

    sweep()

    assert "(0.2 at step 3)" in open_alerts(rule)[0].message


def test_a_rule_added_mid_run_looks_at_the_newest_points_only(alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    # An old excursion below (steps 1, 2) and the present (steps 5, 6) below too.
    report(run, {1: 0.1, 2: 0.1, 3: 0.9, 4: 0.9, 5: 0.2, 6: 0.3})

    rule = rule_on(run, alice, consecutive=2)
    sweep()

    # Only steps 5 and 6 are looked at: one alert, about now.
    [alert] = Alert.objects.filter(rule=rule)
    assert "(0.3 at step 6)" in alert.message and alert.resolved_at is None


def test_a_run_that_finished_between_sweeps_still_gets_its_alert(alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule = rule_on(run, alice, comparison="above", threshold=0.95, metric="rollout/clip_ratio")
    report(run, {1: 0.1, 2: 0.99}, name="rollout/clip_ratio")
    run.status = RunStatus.SUCCEEDED
    run.save(update_fields=["status"])

    assert sweep().alerts_opened == [f"{run.pk}:metric"]

    # Opened and, the run being over, resolved in the same sweep; never looked at again.
    alert = Alert.objects.get(rule=rule)
    assert alert.resolved_at is not None
    assert AlertRule.objects.get(pk=rule.pk).checked_step == 2
    assert list(alerts.AlertRule.objects.filter(checked_step__lt=2)) == []


def test_two_rules_of_a_run_alert_independently(alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    low = rule_on(run, alice, threshold=0.5)
    lower = rule_on(run, alice, threshold=0.3)
    report(run, {1: 0.4, 2: 0.2})

    sweep()

    assert len(open_alerts(low)) == 1 and len(open_alerts(lower)) == 1


def test_rules_alert_on_what_a_real_engine_run_reports(alice, make_run, record, sweep):
    # Two steps of the built-in model, in process, with evaluations before and after.
    sink = ListSink()
    spec = {
        "dataset": {"eval_size": 4},
        "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
        "training": {"steps": 2, "eval_samples": 1},
        "resources": {"executor": "inprocess", "cpus": 1},
    }
    assert engine_run(parse_spec(spec), sink) == "succeeded"
    run = make_run(alice, status=RunStatus.RUNNING)
    # Every response has at least one token, and no accuracy exceeds 1.
    always = rule_on(run, alice, metric="rollout/response_length/max", comparison="above", threshold=0, consecutive=2)
    never = rule_on(run, alice, metric=ACC, comparison="above", threshold=1)

    record(run.pk, [event for event in sink.events if event.kind != "checkpoint"])
    sweep()

    assert len(open_alerts(always)) == 1 and "for 2 reported steps in a row" in open_alerts(always)[0].message
    assert open_alerts(never) == []
    # The held-out metric is reported by the evaluation before step 1 and after step 2.
    assert AlertRule.objects.get(pk=never.pk).checked_step == 2


# --- email: a real SMTP server ---------------------------------------------------------------------


class SmtpServer:
    """A real SMTP server on 127.0.0.1 that keeps what it is sent: (sender, recipients,
    parsed message). It speaks what Django's smtp backend says without TLS or login:
    EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def __init__(self):
        received = self.received = []

        class Session(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 127.0.0.1 test SMTP")
                sender, recipients = None, []
                while line := self.rfile.readline():
                    command = line.decode().rstrip("\r\n")
                    verb = command.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO", "NOOP"):
                        self.reply("250 127.0.0.1")
                    elif verb == "MAIL":
                        sender, recipients = command.split(":", 1)[1].strip().strip("<>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        lines = []
                        while (data := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(data[1:] if data.startswith(b"..") else data)  # dot-stuffing
                        message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                        received.append((sender, recipients, message))
                        self.reply("250 OK")
                    elif verb == "RSET":
                        sender, recipients = None, []
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Session)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def use_smtp(settings, port: int) -> None:
    # pytest-django swaps in the in-memory backend; these tests want the real one.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    settings.DEFAULT_FROM_EMAIL = "rollyard@example.com"
    settings.ROLLYARD_PUBLIC_URL = "https://rollyard.example.com"


@pytest.fixture
def smtp(settings):
    server = SmtpServer()
    use_smtp(settings, server.port)
    yield server
    server.close()


@pytest.fixture
def alice_with_mail(alice):
    alice.email = "alice@example.com"
    alice.save(update_fields=["email"])
    return alice


def test_a_metric_alert_is_mailed_to_the_owner_and_the_rules_addresses(alice_with_mail, make_run, report, sweep, smtp):
    run = make_run(alice_with_mail, name="gsm8k-grpo", status=RunStatus.RUNNING)
    rule = rule_on(run, alice_with_mail, emails=["lead@example.com", "alice@example.com"])
    report(run, {1: 0.2})

    assert sweep().alerts_delivered == 1

    [(sender, recipients, message)] = smtp.received
    assert sender == "rollyard@example.com"
    assert recipients == ["alice@example.com", "lead@example.com"]  # the owner first, each once
    assert message["Subject"] == f"[Rollyard] Metric threshold: run #{run.pk} gsm8k-grpo"
    body = message.get_content()
    assert f"run #{run.pk} gsm8k-grpo: {ACC} below 0.5 (0.2 at step 1)" in body
    assert f"https://rollyard.example.com/runs/{run.pk}/" in body
    alert = Alert.objects.get(rule=rule)
    assert alert.email_delivered_at is not None and alert.email_error == ""
    # Mailed once: the next sweep sends nothing.
    sweep()
    assert len(smtp.received) == 1


def test_a_dead_run_is_mailed_to_its_owner(alice_with_mail, make_run, sweep, smtp, settings):
    settings.ROLLYARD_MAX_ATTEMPTS = 1
    run = make_run(alice_with_mail, status=RunStatus.RUNNING)
    alerts.open_alert(run, "dead", f"run #{run.pk}: no heartbeat")

    sweep()

    [(_, recipients, message)] = smtp.received
    assert recipients == ["alice@example.com"] and "Dead (heartbeat lost)" in message["Subject"]


def test_a_failed_mail_is_recorded_and_sent_by_a_later_sweep(alice_with_mail, make_run, report, sweep, settings):
    closed = SmtpServer()
    closed.close()  # a port nothing listens on any more
    use_smtp(settings, closed.port)
    run = make_run(alice_with_mail, status=RunStatus.RUNNING)
    rule = rule_on(run, alice_with_mail)
    report(run, {1: 0.2})

    assert sweep().alerts_delivered == 0
    alert = Alert.objects.get(rule=rule)
    assert alert.email_delivered_at is None and "ConnectionRefusedError" in alert.email_error

    server = SmtpServer()
    use_smtp(settings, server.port)
    try:
        assert sweep().alerts_delivered == 1
    finally:
        server.close()
    assert len(server.received) == 1
    assert Alert.objects.get(pk=alert.pk).email_delivered_at is not None


def test_without_email_host_nothing_is_mailed(alice_with_mail, make_run, report, sweep, settings):
    settings.EMAIL_HOST = ""
    run = make_run(alice_with_mail, status=RunStatus.RUNNING)
    rule = rule_on(run, alice_with_mail)
    report(run, {1: 0.2})

    assert sweep().alerts_delivered == 0

    alert = Alert.objects.get(rule=rule)
    assert alert.email_to == ["alice@example.com"] and alert.email_delivered_at is None and alert.email_error == ""


def test_a_run_name_with_a_line_break_still_makes_a_one_line_subject(alice_with_mail, make_run, report, sweep, smtp):
    run = make_run(alice_with_mail, name="two\nlines", status=RunStatus.RUNNING)
    rule_on(run, alice_with_mail)
    report(run, {1: 0.2})

    assert sweep().alerts_delivered == 1
    assert smtp.received[0][2]["Subject"] == f"[Rollyard] Metric threshold: run #{run.pk} two lines"


def test_an_owner_without_an_address_and_a_rule_without_any_mails_nobody(alice, make_run, report, sweep, smtp):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule_on(run, alice)
    report(run, {1: 0.2})

    assert sweep().alerts_delivered == 0
    assert smtp.received == []


# --- what users see -------------------------------------------------------------------------------


def test_the_api_lists_the_runs_alerts_and_the_rules_open_alert(api_alice, alerting):
    run, rule, alert = alerting

    listed = api_alice.get(f"/api/runs/{run.pk}/alerts/").json()
    rules = api_alice.get(f"/api/runs/{run.pk}/alert-rules/").json()

    assert [(a["id"], a["kind"], a["rule"], a["resolved_at"]) for a in listed] == [(alert.pk, "metric", rule.pk, None)]
    assert rules[0]["open_alert"] == alert.pk and rules[0]["checked_step"] == 1


def test_the_run_page_shows_the_rules_and_the_open_alert(client, alice, make_run, report, sweep):
    run = make_run(alice, status=RunStatus.RUNNING)
    rule_on(run, alice, consecutive=2, emails=["lead@example.com"])
    quiet = rule_on(run, alice, comparison="above", threshold=0.99)
    report(run, {1: 0.2, 2: 0.3})
    sweep()
    client.force_login(alice)

    page = client.get(f"/runs/{run.pk}/").content.decode()

    assert 'id="run-alert-rules"' in page and f"<code>{ACC}</code>" in page
    assert "below 0.5" in page and "2 steps" in page and "lead@example.com" in page
    assert "<strong>alerting</strong> since" in page
    assert f'data-rule="{quiet.pk}"' in page and "quiet" in page
    # The open alert at the top of the overview and in the rule card's history.
    assert page.count(f"{ACC} below 0.5 for 2 reported steps in a row (0.3 at step 2)") == 2


def page_config(page: str, script_id: str) -> dict:
    """A page's JSON configuration (its json_script element)."""
    opening = f'<script id="{script_id}" type="application/json">'
    start = page.index(opening) + len(opening)
    return json.loads(page[start:page.index("</script>", start)])


def test_the_run_pages_rule_controls_are_for_who_may_change_the_run(teams, make_run):
    run = make_run(teams.member, team=teams.team)
    rule = rule_on(run, teams.member)

    for user, may in ((teams.member, True), (teams.admin, True), (teams.viewer, False)):
        browser = Client()
        browser.force_login(user)
        page = browser.get(f"/runs/{run.pk}/").content.decode()
        config = page_config(page, "run-config")
        assert config["may_change_rules"] is may, user
        assert ('id="alert-rule-form"' in page) is may and (f'data-delete-rule="{rule.pk}"' in page) is may, user
        assert f"<code>{ACC}</code>" in page  # everyone who sees the run sees its rules
    # What the form offers: the documented names (the run reports none yet), endpoints.
    assert ACC in config["documented_metrics"] and "gpu/{i}/utilization" in config["documented_metrics"]
    assert config["alert_rules_url"] == f"/api/runs/{run.pk}/alert-rules/"
    assert config["alert_kinds"]["metric"] == "Metric threshold"


def test_the_launch_form_sends_its_rules_beside_the_spec(browser_alice):
    rules = [{"metric": ACC, "comparison": "below", "threshold": 0.6, "consecutive": 2, "emails": ["lead@example.com"]},
             {"metric": "reward/mean", "comparison": "above", "threshold": 0.99, "consecutive": 1, "emails": []}]

    response = browser_alice.post("/runs/new/", {"spec": "name: watched\n", "alert_rules": json.dumps(rules)})

    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert [alerts.rule_fields(rule) for rule in run.alert_rules.order_by("id")] == rules


def test_a_launch_without_the_rules_field_has_no_rules(browser_alice):
    # The form without JavaScript submits only the YAML.
    assert browser_alice.post("/runs/new/", {"spec": "name: plain\n"}).status_code == 302
    assert AlertRule.objects.count() == 0


@pytest.mark.parametrize(
    ("rules_text", "fields"),
    [
        (json.dumps([{"metric": ACC, "comparison": "below", "threshold": 0.5},
                     {"metric": "no/such", "comparison": "under", "threshold": None, "consecutive": 0}]),
         ["alert_rules.1.metric", "alert_rules.1.comparison", "alert_rules.1.threshold", "alert_rules.1.consecutive"]),
        ("[{not json", ["alert_rules"]),
        ('{"metric": "reward/mean"}', ["alert_rules"]),
    ],
)
def test_a_refused_launch_names_each_bad_rule_field_and_keeps_the_rules(browser_alice, rules_text, fields):
    response = browser_alice.post("/runs/new/", {"spec": "name: watched\n", "alert_rules": rules_text})

    assert response.status_code == 400
    assert Run.objects.count() == 0 and AlertRule.objects.count() == 0
    page = response.content.decode()
    for field in fields:
        assert f'data-field="{field}"' in page, field
    config = page_config(page, "launch-config")
    assert sorted({field for field, _ in config["rule_problems"]}) == sorted(fields)
    # What was sent is kept, for the form to show again and correct.
    assert f'name="alert_rules" id="launch-alert-rules-json" value="{escape(rules_text)}"' in page


def test_a_clone_in_the_launch_form_carries_its_sources_rules(browser_alice, alice):
    source = launch.create_run(alice, {"name": "original"}, alert_rules=[
        {"metric": ACC, "comparison": "below", "threshold": 0.5, "consecutive": 3, "emails": ["lead@example.com"]}])

    page = browser_alice.get(f"/runs/new/?from={source.pk}").content.decode()

    carried = [{"metric": ACC, "comparison": "below", "threshold": 0.5, "consecutive": 3, "emails": ["lead@example.com"]}]
    assert f'value="{escape(json.dumps(carried))}"' in page


def test_the_schema_documents_the_alert_endpoints_and_the_launchs_rules(api_alice):
    schema = api_alice.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]
    rules, rule = "/api/runs/{id}/alert-rules/", "/api/runs/{id}/alert-rules/{rule_id}/"
    assert {"/api/runs/{id}/alerts/", rules, rule} <= set(paths)
    assert {"get", "post"} <= set(paths[rules]) and "delete" in paths[rule]
    components = schema["components"]["schemas"]
    assert components["RunCreate"]["properties"]["alert_rules"]["items"] == {"$ref": "#/components/schemas/AlertRule"}
    assert {"metric", "comparison", "threshold", "consecutive", "emails"} <= set(components["AlertRule"]["properties"])
