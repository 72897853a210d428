"""HubSpot activities (engagements) through the connector, the real hubspot-api-client over HTTP.

The seeded portal's clients have the histories of ``histories.py``: what the connector reads
back must be what the scenario says happened, through both paths (a deal's whole history the
first time, then what changed), at the API cost the batch limits allow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import hubspot
import pandas as pd
import pytest

from handoff.crm import hubspot as connector_module
from handoff.crm.base import (
    ACTIVITY_COLUMNS,
    ACTIVITY_DIRECTIONS,
    ACTIVITY_KINDS,
    ACTIVITY_OUTCOMES,
    SNIPPET_CHARS,
    CrmFatalError,
)
from handoff.crm.hubspot import HubSpotCRM
from handoff.models import dedupe_key
from handoff.redflags.steps import LoadedOnUse
from handoff.sandbox import EDGE_CASE_DEALS, hubspot_api
from handoff.sandbox.histories import HISTORY_CASES, SeedActivity, healthy_history
from handoff.sandbox.hubspot_seed import (
    HISTORY_DAYS,
    PRIMARY_CONTACT_LABEL_TYPE_ID,
    seed_portal,
)
from handoff.sandbox.hubspot_store import USER_DEFINED, HubSpotStore, format_ms, to_ms
from handoff.sandbox.server import SandboxServer

TODAY = date(2026, 11, 23)
MIDNIGHT = datetime.combine(TODAY, time(0), UTC)
STREAMS = ("meetings", "emails", "calls", "notes", "tasks")
LONG_AGO = MIDNIGHT - timedelta(days=400)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """A portal of 30 random deals, the edge cases and the history cases (read only)."""
    with SandboxServer(tmp_path_factory.mktemp("activities") / "portal.db") as server:
        seed_portal(server.hubspot_store, seed=7, deals=30, today=TODAY)
        server.hubspot_api.limits.search_per_second = None
        yield server


@pytest.fixture
def blank(sandbox: SandboxServer) -> SandboxServer:
    """A portal with the seed's schema and its named clients, searches unthrottled."""
    seed_portal(sandbox.hubspot_store, seed=7, deals=0, today=TODAY)
    sandbox.hubspot_api.limits.search_per_second = None
    return sandbox


def crm_for(server: SandboxServer, settings, **options: Any) -> HubSpotCRM:
    client = hubspot.Client.create(access_token=server.token, host=server.url)
    return HubSpotCRM.from_settings(client, settings, search_pause=0, **options)


@dataclass(frozen=True)
class Client:
    """A won deal of the portal, its win and its primary contact."""

    deal_id: str
    name: str
    won_at: datetime
    contact: int | None


def won_clients(store: HubSpotStore) -> list[Client]:
    """Every won deal, with its win and its primary contact (names repeat in a portal)."""
    deals = store.page("deals", archived=False, after_id=0, limit=10**6)
    links = store.associations("deals", [d.id for d in deals], "contacts")
    found = []
    for deal in deals:
        props = deal.properties
        entered = props.get(f"hs_v2_date_entered_{props.get('dealstage')}")
        if props.get("hs_is_closed_won") != "true" or not entered:
            continue
        primary = [
            contact
            for contact, types in links.get(deal.id, {}).items()
            if (USER_DEFINED, PRIMARY_CONTACT_LABEL_TYPE_ID) in types
        ]
        won_at = datetime.fromisoformat(entered.replace("Z", "+00:00"))
        found.append(Client(str(deal.id), props["dealname"], won_at, next(iter(primary), None)))
    return found


def named(store: HubSpotStore) -> dict[str, Client]:
    """The named clients (history cases, edge cases) by deal name."""
    cases = {case.deal for case in HISTORY_CASES} | set(EDGE_CASE_DEALS)
    return {c.name: c for c in won_clients(store) if c.name in cases}


def deal_map(clients: list[Client]) -> dict[str, str | None]:
    return {c.deal_id: str(c.contact) if c.contact else None for c in clients}


def read(
    crm: HubSpotCRM,
    deals: Mapping[str, str | None],
    since: datetime | None,
    until: datetime,
    streams: tuple[str, ...] = STREAMS,
) -> pd.DataFrame:
    frames = [frame for s in streams for frame in crm.iter_activities(s, deals, since, until)]
    assert all(len(frame) for frame in frames), "no empty frame"
    if not frames:
        return pd.DataFrame(columns=ACTIVITY_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def expected_outcome(item: SeedActivity) -> str | None:
    """What HubSpot keeps of a seeded outcome: meetings all four, calls and tasks done or not."""
    if item.kind == "meeting":
        return item.outcome
    if item.kind == "call" and item.outcome in ("completed", "cancelled"):
        return item.outcome
    if item.kind == "task" and item.outcome == "completed":
        return "completed"
    return None


def story(rows: pd.DataFrame) -> list[tuple[Any, ...]]:
    """What happened on a deal, as comparable tuples in time order."""
    return sorted(
        (r.kind, r.direction, r.outcome, r.occurred_at.to_pydatetime(), r.subject)
        for r in rows.itertuples()
    )


def stored(moment: datetime) -> datetime:
    """A moment as HubSpot keeps it: to the millisecond."""
    return pd.Timestamp(to_ms(moment), unit="ms", tz=UTC).to_pydatetime()


def scenario(items: list[SeedActivity]) -> list[tuple[Any, ...]]:
    return sorted(
        (i.kind, i.direction, expected_outcome(i), stored(i.at), i.subject or None) for i in items
    )


# -- what comes back -----------------------------------------------------------------------------


def test_frames_have_the_activity_columns_and_utc_timestamps(seeded, settings):
    crm = crm_for(seeded, settings)
    clients = won_clients(seeded.hubspot_store)
    rows = read(crm, deal_map(clients), None, MIDNIGHT)
    assert list(rows.columns) == ACTIVITY_COLUMNS
    for stream in STREAMS:
        [frame, *_] = crm.iter_activities(stream, deal_map(clients), None, MIDNIGHT)
        assert list(frame.columns) == ACTIVITY_COLUMNS
        assert str(frame["occurred_at"].dtype) == "datetime64[ns, UTC]"
        assert str(frame["modstamp"].dtype) == "datetime64[ns, UTC]"
        assert frame["is_deleted"].dtype == bool and not frame["is_deleted"].any()
        assert frame["activity_id"].str.fullmatch(rf"{stream}:\d+").all()
    assert set(rows["kind"]) == set(ACTIVITY_KINDS)
    assert set(rows["direction"]) == set(ACTIVITY_DIRECTIONS)
    assert set(rows["outcome"].dropna()) <= set(ACTIVITY_OUTCOMES)
    assert rows["snippet"].dropna().str.len().max() <= SNIPPET_CHARS
    assert not rows["snippet"].dropna().str.contains("<p>|<br>").any(), "HTML stripped"
    assert (rows["modstamp"] < MIDNIGHT).all() and rows["deal_id"].isin(deal_map(clients)).all()


def test_every_history_case_comes_back_as_it_happened(seeded, settings):
    crm = crm_for(seeded, settings)
    clients = named(seeded.hubspot_store)
    cases = [clients[case.deal] for case in HISTORY_CASES]
    rows = read(crm, deal_map(cases), None, MIDNIGHT)
    for case, client in zip(HISTORY_CASES, cases, strict=True):
        mine = rows[rows["deal_id"] == client.deal_id]
        history = case.history(client.won_at)
        assert story(mine) == scenario(history), case.deal
        for item, row in zip(
            sorted(history, key=lambda i: (i.at, i.kind)),
            mine.sort_values(["occurred_at", "kind"]).itertuples(),
            strict=True,
        ):
            assert row.modstamp == stored(item.modstamp), (case.deal, item.key)
            inbound = item.direction == "inbound"
            assert (row.owner_id is None) == (inbound and item.kind == "email"), item.key
            if item.kind == "note":
                assert row.snippet == item.body
            if item.step:
                assert row.handoff_key == dedupe_key("hubspot", client.deal_id, item.step)
    scheduled = rows[rows["outcome"] == "scheduled"]
    assert len(scheduled) == 1 and scheduled["occurred_at"].iloc[0] > MIDNIGHT, "a booked meeting"


def test_recent_wins_come_back_with_their_healthy_history(seeded, settings):
    crm = crm_for(seeded, settings)
    cases = {case.deal for case in HISTORY_CASES}
    clients = [
        c
        for c in won_clients(seeded.hubspot_store)
        if c.name not in cases and c.won_at >= MIDNIGHT - timedelta(days=HISTORY_DAYS)
    ]
    assert len(clients) > len(EDGE_CASE_DEALS), "random recent and older wins too"
    rows = read(crm, deal_map(clients), None, MIDNIGHT)
    for client in clients:
        mine = rows[rows["deal_id"] == client.deal_id]
        assert story(mine) == scenario(healthy_history(client.name, client.won_at, MIDNIGHT))


def test_the_incremental_path_finds_what_the_first_read_found(seeded, settings):
    crm = crm_for(seeded, settings)
    clients = won_clients(seeded.hubspot_store)
    whole = read(crm, deal_map(clients), None, MIDNIGHT)
    changed = read(crm, deal_map(clients), LONG_AGO, MIDNIGHT)
    pairs = sorted(zip(whole["activity_id"], whole["deal_id"], strict=True))
    assert pairs == sorted(zip(changed["activity_id"], changed["deal_id"], strict=True))
    merged = whole.merge(changed, on=["activity_id", "deal_id"], suffixes=("", "_inc"))
    for column in ("kind", "direction", "outcome", "subject", "snippet", "owner_id"):
        assert (merged[column].fillna("") == merged[f"{column}_inc"].fillna("")).all(), column


# -- incremental reads -------------------------------------------------------------------------


def test_a_second_read_finds_nothing_then_a_change_and_a_deletion(blank, settings):
    crm = crm_for(blank, settings)
    store = blank.hubspot_store
    clients = named(store)
    cases = [clients[case.deal] for case in HISTORY_CASES]
    deals = deal_map(cases)
    first = read(crm, deals, MIDNIGHT - timedelta(days=HISTORY_DAYS), MIDNIGHT)
    assert len(first) == sum(
        len(case.history(c.won_at)) for case, c in zip(HISTORY_CASES, cases, strict=True)
    )

    calls, loads = crm.api_calls, []
    quiet = LoadedOnUse(lambda: loads.append(1) or deals, size=len(deals))
    assert read(crm, quiet, MIDNIGHT, MIDNIGHT + timedelta(hours=1)).empty
    assert crm.api_calls - calls == 2 * len(STREAMS), "an archived list and a search a stream"
    assert loads == [], "nothing changed: the deals were never looked at"

    orbit = clients["Orbit Fitness — two no-shows"]
    meeting = first[(first["deal_id"] == orbit.deal_id) & (first["kind"] == "meeting")]
    meeting_id = int(meeting["activity_id"].iloc[0].split(":")[1])
    changed_at = MIDNIGHT + timedelta(minutes=10)
    store.update("meetings", meeting_id, {"hs_meeting_outcome": "NO_SHOW"}, when=to_ms(changed_at))
    email = first[(first["deal_id"] == orbit.deal_id) & (first["kind"] == "email")]
    email_id = int(email["activity_id"].iloc[0].split(":")[1])
    deleted_at = MIDNIGHT + timedelta(minutes=20)
    store.archive("emails", email_id, when=to_ms(deleted_at))
    # Someone else's client changes too: not on these deals, not read back.
    other = next(c for c in clients.values() if c.deal_id not in deals)
    others = store.associations("deals", [int(other.deal_id)], "emails")[int(other.deal_id)]
    store.update("emails", next(iter(others)), {"hs_email_subject": "x"}, when=to_ms(changed_at))

    calls = crm.api_calls
    rows = read(crm, deals, MIDNIGHT, MIDNIGHT + timedelta(hours=1))
    # meetings: list, search, activity -> deals; emails: list, search, -> deals, -> contacts
    # (the other client's email is on no given deal); three quiet streams: list, search.
    assert crm.api_calls - calls == 3 + 4 + 3 * 2
    assert list(rows["activity_id"]) == [f"meetings:{meeting_id}", f"emails:{email_id}"]
    assert set(rows["deal_id"]) == {orbit.deal_id}
    assert list(rows["is_deleted"]) == [False, True]
    assert list(rows["modstamp"]) == [changed_at, deleted_at]
    assert (
        rows["outcome"].iloc[0] == "no_show" and rows["subject"].iloc[1] == email["subject"].iloc[0]
    )
    assert read(crm, deals, MIDNIGHT + timedelta(hours=1), MIDNIGHT + timedelta(hours=2)).empty


def _deal_with_contact(writer, n: int, stamp: datetime) -> tuple[int, int]:
    contact = writer.insert("contacts", {"lastname": f"Client {n}"}, created=stamp).id
    deal = writer.insert(
        "deals", {"dealname": f"Deal {n}", "dealstage": "closedwon"}, created=stamp
    ).id
    writer.associate(
        "deals", deal, "contacts", contact, [(USER_DEFINED, PRIMARY_CONTACT_LABEL_TYPE_ID)]
    )
    return deal, contact


def _email(writer, deal: int | None, contacts: tuple[int, ...], stamp: datetime, **props) -> int:
    values = {"hs_email_subject": "Hello", "hs_email_direction": "INCOMING_EMAIL",
              "hs_timestamp": format_ms(to_ms(stamp)), **props}  # fmt: skip
    record = writer.insert("emails", values, created=stamp, updated=stamp)
    if deal is not None:
        writer.associate("emails", record.id, "deals", deal)
    for contact in contacts:
        writer.associate("emails", record.id, "contacts", contact)
    return record.id


def test_notes_sharing_a_timestamp_across_page_boundaries_come_back_once(
    blank, settings, monkeypatch
):
    """150 distinct stamps, then 100 notes sharing one stamp across the first page boundary
    (notes 150 to 249), then 200 sharing another across the second (250 to 449). The search
    cap is lowered under the window's size: every page is a fresh search from the last key."""
    monkeypatch.setattr(hubspot_api, "SEARCH_RESULT_CAP", 300)
    start = MIDNIGHT + timedelta(hours=1)
    stamps = [start + timedelta(seconds=n) for n in range(150)]
    stamps += [start + timedelta(hours=1)] * 100 + [start + timedelta(hours=2)] * 200
    with blank.hubspot_store.bulk() as writer:
        deal, contact = _deal_with_contact(writer, 0, MIDNIGHT)
        ids = []
        for n, stamp in enumerate(stamps):
            note = writer.insert("notes", {"hs_note_body": f"<p>Note {n}</p>",
                                           "hs_timestamp": format_ms(to_ms(stamp))},
                                 created=stamp, updated=stamp)  # fmt: skip
            writer.associate("notes", note.id, "deals", deal)
            ids.append(f"notes:{note.id}")
    crm = crm_for(blank, settings)
    searches = blank.hubspot_stats()["by_route"].get("search:notes", 0)
    calls = crm.api_calls
    frames = list(
        crm.iter_activities("notes", {str(deal): str(contact)}, start, start + timedelta(days=1))
    )
    assert [len(frame) for frame in frames] == [200, 200, 50]
    assert [i for frame in frames for i in frame["activity_id"]] == ids, "once each, in order"
    assert blank.hubspot_stats()["by_route"]["search:notes"] - searches == 3
    assert crm.api_calls - calls == 1 + 3 + 3, "archived list, three pages and their links"
    assert frames[0]["subject"].iloc[0] == "Note 0"


def test_an_activity_on_the_contact_counts_for_every_deal_it_is_primary_on(blank, settings):
    stamp = MIDNIGHT + timedelta(hours=3)
    with blank.hubspot_store.bulk() as writer:
        first, client = _deal_with_contact(writer, 1, MIDNIGHT)
        second = writer.insert("deals", {"dealname": "Second"}, created=MIDNIGHT).id
        writer.associate(
            "deals", second, "contacts", client, [(USER_DEFINED, PRIMARY_CONTACT_LABEL_TYPE_ID)]
        )
        elsewhere, stranger = _deal_with_contact(writer, 2, MIDNIGHT)
        only_contact = _email(writer, None, (client,), stamp)
        deal_and_contact = _email(writer, first, (client,), stamp)
        other_deal = _email(writer, elsewhere, (), stamp)
        other_deal_and_client = _email(writer, elsewhere, (client,), stamp)
        stranger_only = _email(writer, None, (stranger,), stamp)
    deals = {str(first): str(client), str(second): str(client)}
    crm = crm_for(blank, settings)
    expected = {
        (f"emails:{only_contact}", str(first)), (f"emails:{only_contact}", str(second)),
        (f"emails:{deal_and_contact}", str(first)),
        # On no given deal, but on the client: it counts for the client's deals.
        (f"emails:{other_deal_and_client}", str(first)),
        (f"emails:{other_deal_and_client}", str(second)),
    }  # fmt: skip
    for since in (stamp, None):
        rows = read(crm, deals, since, stamp + timedelta(hours=1), ("emails",))
        assert set(zip(rows["activity_id"], rows["deal_id"], strict=True)) == expected, since
        assert len(rows) == len(expected)
    assert f"emails:{other_deal}" not in set(rows["activity_id"])
    assert f"emails:{stranger_only}" not in set(rows["activity_id"])
    assert rows["owner_id"].isna().all() and (rows["direction"] == "inbound").all()


# -- API calls ---------------------------------------------------------------------------------


@pytest.fixture
def many(blank) -> tuple[SandboxServer, dict[str, str]]:
    """250 deals, each with its primary contact and two emails on both."""
    stamp = MIDNIGHT + timedelta(hours=5)
    deals = {}
    with blank.hubspot_store.bulk() as writer:
        for n in range(250):
            deal, contact = _deal_with_contact(writer, 10 + n, MIDNIGHT)
            deals[str(deal)] = str(contact)
            for k in range(2):
                _email(writer, deal, (contact,), stamp + timedelta(seconds=k))
    return blank, deals


def test_a_first_read_of_250_deals_costs_what_the_batch_limits_say(many, settings, monkeypatch):
    server, deals = many
    crm = crm_for(server, settings)
    until = MIDNIGHT + timedelta(days=1)
    calls = crm.api_calls
    rows = read(crm, deals, None, until, ("emails",))
    assert len(rows) == 500 and set(rows["deal_id"]) == set(deals)
    reads = math.ceil(500 / 100)
    assert crm.api_calls - calls == 1 + 1 + reads, "deals->emails, contacts->emails, reads"

    # The same read with 100 inputs an association read: three calls each way.
    monkeypatch.setattr(hubspot_api, "ASSOCIATION_BATCH_LIMIT", 100)
    with pytest.raises(CrmFatalError, match="400"):
        read(crm_for(server, settings), deals, None, until, ("emails",))
    monkeypatch.setattr(connector_module, "ASSOCIATION_BATCH_LIMIT", 100)
    crm = crm_for(server, settings)
    assert len(read(crm, deals, None, until, ("emails",))) == 500
    assert crm.api_calls == 3 + 3 + reads

    # One association an answer: every record's second email comes with its own cursor.
    monkeypatch.setattr(hubspot_api, "ASSOCIATION_PAGE", 1)
    crm = crm_for(server, settings)
    assert len(read(crm, deals, None, until, ("emails",))) == 500
    assert crm.api_calls == 2 * 5 + reads, "500 inputs each way: 250 ids, 250 cursors"

    # Incremental, HubSpot's limits again: 500 changed emails are three search pages, each
    # with one link read (every email is on a given deal: no contact read).
    monkeypatch.undo()
    crm = crm_for(server, settings)
    assert len(read(crm, deals, MIDNIGHT, until, ("emails",))) == 500
    assert crm.api_calls == 1 + 3 + 3


def test_no_deals_cost_nothing_and_an_unknown_stream_is_refused(blank, settings):
    crm = crm_for(blank, settings)
    assert list(crm.iter_activities("emails", {}, None, MIDNIGHT)) == []
    assert crm.api_calls == 0
    assert crm.activity_streams == STREAMS
    with pytest.raises(ValueError, match="not an activity stream"):
        list(crm.iter_activities("Task", {"1": None}, None, MIDNIGHT))
