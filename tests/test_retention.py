"""Session retention: idle sessions expire after their TTL, busy ones never; a session may set its own.

Real worker processes with ``CHATQ_SESSION_TTL`` of 2 s; bounds on when an expiry is noticed are
generous (Redis expires keys lazily and by sampling).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from chatq.tasks.client import ChatClient
from chatq.tasks.errors import InvalidRequest

from .test_core import run_cli


def sid(prefix: str = "ttl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def gone_within(client: ChatClient, session_id: str, seconds: float) -> float:
    started = time.monotonic()
    while client.get_session(session_id) is not None:
        assert time.monotonic() - started < seconds, f"session {session_id} still there after {seconds}s"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def short_lived(make_fleet):
    fleet = make_fleet(session_ttl="2")
    fleet.start_worker(8)
    return fleet, ChatClient(settings=fleet.settings.model_copy(update={"session_ttl": 2}))


def test_an_idle_session_expires_and_a_busy_one_is_kept_past_its_ttl(short_lived):
    fleet, client = short_lived
    s = sid()
    assert client.chat("My name is Ann", s, timeout=30).status == "succeeded"
    session = client.get_session(s)
    assert session.ttl == 2 and 0 < client.r.ttl(client.keys.messages(s)) <= 2
    slow = client.submit("[[stall:3]] a slow turn", s)
    time.sleep(2.5)
    assert client.r.ttl(client.keys.session(s)) == -1, "work is queued or running: kept"
    assert client.wait(slow.job_id, 30).status == "succeeded", fleet.logs()
    assert len(client.get_session(s).messages) == 4, "nothing of the history expired while it ran"
    gone_within(client, s, 6)
    assert not client.r.exists(client.keys.messages(s))
    assert s not in client.list_sessions()
    again = client.chat("What's my name?", s, timeout=30)
    assert again.status == "succeeded" and "Ann" not in again.result.content
    assert len(client.get_session(s).messages) == 2, "a new session under the same ID"


def test_a_session_sets_its_own_retention(short_lived):
    fleet, client = short_lived
    forever, short = sid("forever"), sid("short")
    client.create_session(forever, ttl=0)
    assert client.chat("keep me", forever, timeout=30).status == "succeeded"
    job = client.submit("forget me soon", short, session_ttl=1)
    assert client.wait(job.job_id, 30).status == "succeeded"
    assert client.get_session(short).ttl == 1
    assert gone_within(client, short, 4) < 4
    time.sleep(2.5)
    kept = client.get_session(forever)
    assert kept is not None and kept.ttl is None and len(kept.messages) == 2
    assert client.r.ttl(client.keys.session(forever)) == -1
    with pytest.raises(InvalidRequest, match="TTL"):
        client.submit("hi", sid(), session_ttl=-1)
    with pytest.raises(InvalidRequest, match="TTL"):
        client.create_session(sid(), ttl=True)


def test_the_sweeper_drops_expired_sessions_from_the_listing(short_lived):
    fleet, client = short_lived
    s = sid("swept")
    assert client.chat("briefly", s, timeout=30).status == "succeeded"
    assert client.r.zscore(client.keys.sessions, s) is not None
    gone_within(client, s, 6)
    deadline = time.monotonic() + 10  # sweeps every 0.5 s here; nobody lists meanwhile
    while client.r.zscore(client.keys.sessions, s) is not None:
        assert time.monotonic() < deadline, "the listing keeps an expired session"
        time.sleep(0.2)


def test_session_ttl_through_the_cli_and_http(fleet):
    from chatq.api.app import create_app

    from .test_api import KEY_A, api_settings, http, serve

    s = sid("cli")
    out = run_cli(fleet, "submit", "hi", "--session", s, "--session-ttl", "600")
    assert out.returncode == 0, out.stderr
    client = fleet.client()
    client.wait(json.loads(out.stdout)["job_id"], 30)
    assert client.get_session(s).ttl == 600 and 0 < client.r.ttl(client.keys.session(s)) <= 600
    with serve(create_app(api_settings(), fleet.settings)) as url, http(url, KEY_A) as a:
        h = sid("http")
        r = a.post(f"/v1/sessions/{h}/messages", json={"message": "hi", "session_ttl": 0})
        assert r.status_code == 202
        a.get(f"/v1/jobs/{r.json()['job_id']}", params={"wait": 30})
        assert a.get(f"/v1/sessions/{h}").json()["ttl"] is None
        for bad in (-1, "60", 1.5, True):
            assert a.post(f"/v1/sessions/{h}/messages", json={"message": "hi", "session_ttl": bad}).status_code == 422
