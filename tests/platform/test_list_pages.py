"""The runs list page's keyset pages (rollyard.pagination): "newer" / "older" links keyed
by (created_at, id), stable while runs arrive, and a clear 400 for a cursor the list did
not make. Runs here share timestamps on purpose, so the id has to break the ties."""

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.test import Client

from accounts.models import Role
from accounts.services import add_member, default_team
from rollyard.pagination import Cursor
from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db

PAGE = 50  # runs.views.RUNS_PER_PAGE
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def browser_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def runs_at(owner, count: int, start: int = 0, same_time_per: int = 7, **fields) -> list[Run]:
    """`count` runs, `same_time_per` of them at each second from T0 + start seconds."""
    team = fields.pop("team", None) or default_team(owner)
    return Run.objects.bulk_create(
        Run(owner=owner, team=team, name=f"run-{start + i}", spec={}, created_at=T0 + timedelta(seconds=(start + i) // same_time_per), **fields)
        for i in range(count)
    )  # fmt: skip


def listed(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-run-id="(\d+)"', page)]


def link(page: str, rel: str) -> str | None:
    """The query string of the pager's newer (rel=prev) or older (rel=next) link."""
    found = re.search(rf'<a href="\?([^"]*)" rel="{rel}">', page)
    return unescape(found[1]) if found else None


def newest_first(runs: list[Run]) -> list[int]:
    return [run.pk for run in sorted(runs, key=lambda run: (run.created_at, run.pk), reverse=True)]


def walk_older(client: Client, query: str = "") -> list[list[int]]:
    """Every page from the first, following "older" to the end."""
    pages = []
    while True:
        page = client.get(f"/runs/?{query}").content.decode()
        pages.append(listed(page))
        query = link(page, "next")
        if query is None:
            return pages


def test_older_pages_list_every_run_once_newest_first(browser_alice, alice):
    runs = runs_at(alice, 2 * PAGE + 13)  # 113 runs, 7 to a second: ties cross every page boundary

    pages = walk_older(browser_alice)

    assert [len(page) for page in pages] == [PAGE, PAGE, 13]
    assert sum(pages, []) == newest_first(runs)


def test_newer_links_lead_back_to_the_same_pages(browser_alice, alice):
    runs_at(alice, 2 * PAGE + 13)
    first = browser_alice.get("/runs/").content.decode()
    second = browser_alice.get(f"/runs/?{link(first, 'next')}").content.decode()
    third = browser_alice.get(f"/runs/?{link(second, 'next')}").content.decode()

    back_to_second = browser_alice.get(f"/runs/?{link(third, 'prev')}").content.decode()
    back_to_first = browser_alice.get(f"/runs/?{link(back_to_second, 'prev')}").content.decode()

    assert listed(back_to_second) == listed(second)
    assert listed(back_to_first) == listed(first)
    # The first page has no newer link, the last no older one.
    assert link(first, "prev") is None and link(back_to_first, "prev") is None
    assert link(third, "next") is None


def test_older_pages_do_not_shift_when_new_runs_arrive(browser_alice, alice):
    runs = runs_at(alice, 2 * PAGE + 13)
    first = browser_alice.get("/runs/").content.decode()

    # 30 runs launched while the user reads the first page: newer than all of them.
    arrived = runs_at(alice, 30, start=10_000)
    rest = walk_older(browser_alice, link(first, "next"))

    assert listed(first) + sum(rest, []) == newest_first(runs)  # each older run once, none twice
    second = browser_alice.get(f"/runs/?{link(first, 'next')}").content.decode()
    # "newer" from the second page: the 50 just above it, the first page as it was read.
    assert listed(browser_alice.get(f"/runs/?{link(second, 'prev')}").content.decode()) == listed(first)
    # The list opens on the new ones.
    assert listed(browser_alice.get("/runs/").content.decode())[:30] == newest_first(arrived)


def test_a_newer_page_short_of_a_full_page_is_the_first_page(browser_alice, alice):
    runs = runs_at(alice, PAGE + 5)
    oldest = sorted(runs, key=lambda run: (run.created_at, run.pk))
    # From the 10th newest run, only 9 are newer: the answer is the first page, full.
    page = browser_alice.get(f"/runs/?after={Cursor.of(oldest[-10])}").content.decode()

    assert listed(page) == newest_first(runs)[:PAGE]
    assert link(page, "prev") is None and link(page, "next") is not None


def test_pages_keep_the_filters(browser_alice, alice):
    runs_at(alice, 2 * PAGE, status=RunStatus.RUNNING)
    runs_at(alice, 2 * PAGE, start=1000, status=RunStatus.FAILED)

    pages = walk_older(browser_alice, "status=running")

    assert [len(page) for page in pages] == [PAGE, PAGE]
    assert set(Run.objects.filter(pk__in=sum(pages, [])).values_list("status", flat=True)) == {RunStatus.RUNNING}


def test_pages_hold_only_the_users_runs(browser_alice, alice, bob, make_user):
    team = default_team(alice)
    add_member(team, bob, Role.MEMBER)
    shared = runs_at(bob, PAGE + 3, team=team)
    carol = make_user("carol")
    runs_at(carol, PAGE + 3)  # carol's own team: alice is not in it

    assert sum(walk_older(browser_alice), []) == newest_first(shared)


@pytest.mark.parametrize(
    "query",
    [
        "before=x",
        "after=12_",
        "before=1_2_3",
        "before=--5_1",
        "before=1.5_2",
        "before=%C2%B2_1",  # '²' is a digit to str.isdigit, not to int
        "before=1_9223372036854775808",  # past the id column's bigint
        "before=9999999999999999999_1",  # 316,000 years after 1970: no datetime
        "before=-9999999999999999999_1",
        "before=" + "9" * 5000 + "_1",  # more digits than int() reads
        "before=1_1&after=1_1",
    ],
)
def test_a_cursor_the_list_did_not_make_is_a_400_naming_it(browser_alice, alice, query):
    runs_at(alice, 3)

    response = browser_alice.get(f"/runs/?{query}")

    assert response.status_code == 400
    page = response.content.decode()
    field = "after" if query.startswith("after") or "&after" in query else "before"
    assert f'data-field="{field}"' in page
    assert listed(page) == []


def test_a_well_made_cursor_past_the_end_is_an_empty_page_leading_back(browser_alice, alice):
    runs_at(alice, 3)

    response = browser_alice.get("/runs/?status=queued&before=0_1")  # 1970: nothing is older

    assert response.status_code == 200
    page = response.content.decode()
    assert listed(page) == [] and 'id="runs-empty"' in page
    assert 'href="?status=queued">Back to the newest' in page


def test_cursors_read_back_what_they_wrote():
    at = datetime(2026, 12, 1, 12, 19, 8, 123456, tzinfo=UTC)

    text = str(Cursor(at, 42))

    # 2026-12-01T12:19:08.123456Z is 1,796,127,548.123456 s after 1970 (date +%s -d 2026-12-01T12:19:08Z).
    assert text == "1796127548123456_42"
    assert Cursor.parse("before", text) == Cursor(at, 42)


def test_the_search_finds_a_name_part_an_owner_or_an_id(browser_alice, alice, bob):
    team = default_team(alice)
    add_member(team, bob, Role.MEMBER)
    mine = Run.objects.create(owner=alice, team=team, name="Long-Context Sweep", spec={})
    theirs = Run.objects.create(owner=bob, team=team, name="baseline", spec={})

    def searched(text: str) -> set[int]:
        return set(listed(browser_alice.get("/runs/", {"q": text}).content.decode()))

    assert searched("context") == {mine.pk}  # any case, any part
    assert searched("BOB") == {theirs.pk}  # an owner's whole username
    assert searched("bo") == set()  # not part of one
    assert searched(f"#{theirs.pk}") == {theirs.pk}
    assert searched("nothing like it") == set()
