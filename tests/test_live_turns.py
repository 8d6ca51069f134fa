"""Live turns through real workers and the real SDK against the test server's streams: a job's
events as they happen, resumed from any seq, a worker killed mid-stream, a running turn stopped,
and the double-texting strategies (interrupt, rollback)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from chatq.tasks.errors import EventsGone
from chatq.tasks.models import FunctionCall, Message, ToolCall
from chatq.worker.agent import Turn

SLOW = "[[stream delay=0.05 words=200]]"  # about 10 s of streaming: long enough to stop or kill midway


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def first_event(client, job_id: str, type: str, timeout: float = 30):
    for event in client.stream(job_id, timeout=timeout):
        if event.type == type:
            return event
    raise AssertionError(f"no {type} event")


def deltas(events) -> str:
    return "".join(e.data["text"] for e in events if e.type == "message.delta")


def follow_whole(client, job_id: str) -> tuple[list, str | None]:
    """Every event of the job as a reader gets it, and the job's status when its first text came."""
    seen, status_at_first_delta = [], None
    for event in client.stream(job_id, timeout=60):
        if event.type == "message.delta" and status_at_first_delta is None:
            status_at_first_delta = client.get(job_id).status
        seen.append(event)
    return seen, status_at_first_delta


def until_running(client, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(job_id).status != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)


def test_deltas_arrive_before_the_job_finishes_and_add_up_to_the_reply(fleet, client):
    job = client.submit("tell me a story [[stream delay=0.02 words=80]]", sid("live"), stream=True)
    seen, running_at_first_delta = follow_whole(client, job.job_id)
    assert running_at_first_delta == "running", "text reaches readers while the model writes it"
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), "seq counts 1, 2, 3... with no gap"
    assert seen[0].type == "job.started" and seen[0].data["attempt"] == 1
    assert seen[-1].type == "job.succeeded" and seen[-1].data["status"] == "succeeded"
    final = client.get(job.job_id)
    assert deltas(seen) == final.result.content == seen[-1].data["result"]["content"]
    assert len(final.result.content.split()) >= 80
    assert final.result.usage.completion_tokens > 0, "usage comes with the stream (include_usage)"
    pieces = sum(1 for e in seen if e.type == "message.delta")
    assert pieces < 80, "deltas are coalesced, not one write per token"


def test_a_job_nobody_watches_is_asked_for_its_reply_whole(fleet, client, fake_openai):
    # CHATQ_STREAM=auto, the default: nobody asked for this job's stream, so its provider call is
    # not streamed (a stream's per-chunk reading would be paid for nothing)
    tag = sid("alone")
    done = client.wait(client.submit(f"{tag} [[stream delay=0.01 words=60]]", sid("alone")).job_id, 60)
    assert fake_openai.streams(tag) == [], "asked for the whole reply"
    events = client.events.read(done.job_id)
    assert [e.type for e in events] == ["job.started", "message.delta", "job.succeeded"], \
        "the whole reply goes out with the terminal event"
    assert deltas(events) == done.result.content


def test_a_reader_that_follows_a_queued_job_gets_it_streamed(fleet, client, fake_openai):
    session, tag = sid("queued"), sid("then-me")
    first = client.submit("hold the session [[stall:1.5]]", session)
    second = client.submit(f"{tag} [[stream delay=0.02 words=60]]", session)
    assert client.get(second.job_id).status == "queued"
    seen, running_at_first_delta = follow_whole(client, second.job_id)  # it follows while the job waits
    assert client.get(first.job_id).status == "succeeded"
    assert running_at_first_delta == "running" and sum(e.type == "message.delta" for e in seen) >= 2
    assert len(fake_openai.streams(tag)) == 1, "the job's call streamed: a reader was there when it started"
    assert deltas(seen) == seen[-1].data["result"]["content"]


def test_a_job_submitted_to_stream_gives_a_late_reader_the_text_so_far_then_live(fleet, client, fake_openai):
    tag = sid("asked")
    job = client.submit(f"{tag} [[stream delay=0.03 words=100]]", sid("asked"), stream=True)
    assert client.r.hget(client.keys.job(job.job_id), "followed") == "1", "marked as a reader's follow marks it"
    until_running(client, job.job_id)
    time.sleep(0.6)  # the model has written some of its reply by now, and the worker the text so far
    assert deltas(client.events.read(job.job_id)), "written as it streams, before any reader came"
    seen, running_at_first_delta = follow_whole(client, job.job_id)
    assert running_at_first_delta == "running"
    assert sum(e.type == "message.delta" for e in seen) >= 3, "the text so far, then the rest as it comes"
    assert "followed" not in seen[-1].data, "the workers' mark is not part of the finished job"
    assert deltas(seen) == seen[-1].data["result"]["content"] == client.get(job.job_id).result.content
    assert len(fake_openai.streams(tag)) == 1


def test_a_reader_mid_call_gets_that_calls_text_when_it_ends(fleet, client, fake_openai):
    # Nobody watched when the call began, so it was asked for whole: its text comes in one piece.
    tag = sid("midcall")
    job = client.submit(f"{tag} [[stall:1.5]]", sid("midcall"))
    until_running(client, job.job_id)
    seen, _ = follow_whole(client, job.job_id)
    assert [e.type for e in seen] == ["job.started", "message.delta", "job.succeeded"]
    assert deltas(seen) == seen[-1].data["result"]["content"]
    assert fake_openai.streams(tag) == []


def test_streaming_every_call_keeps_unwatched_text_for_the_commit_until_a_reader_comes(make_fleet, fake_openai):
    # CHATQ_STREAM=always: every call streams, so a reader that comes mid-reply gets the text so far
    # at once and the rest live; until one comes nothing is written (CHATQ_STREAM_TEXT=followed).
    fleet = make_fleet(stream="always")
    fleet.start_worker(4)
    client = fleet.client()
    alone = client.wait(client.submit("alone [[stream delay=0.01 words=60]]", sid("alone")).job_id, 60)
    assert [e.type for e in client.events.read(alone.job_id)] == ["job.started", "message.delta", "job.succeeded"]
    tag = sid("late")
    late = client.submit(f"{tag} [[stream delay=0.03 words=100]]", sid("late"))
    until_running(client, late.job_id)
    time.sleep(0.6)
    assert [e.type for e in client.events.read(late.job_id)] == ["job.started"], "no text written unfollowed"
    seen, running_at_first_delta = follow_whole(client, late.job_id)
    assert running_at_first_delta == "running", "a reader that arrives mid-reply gets the text at once"
    assert client.r.hget(client.keys.job(late.job_id), "followed") == "1"
    assert sum(e.type == "message.delta" for e in seen) >= 2, "the text so far, then the rest as it comes"
    assert deltas(seen) == seen[-1].data["result"]["content"] == client.get(late.job_id).result.content
    assert len(fake_openai.streams(tag)) == 1


def test_stream_text_always_writes_text_as_it_streams_with_no_reader(make_fleet):
    fleet = make_fleet(stream_text="always")
    fleet.start_worker(4)
    client = fleet.client()
    job = client.submit("nobody watches [[stream delay=0.02 words=60]]", sid("always"))
    done = client.wait(job.job_id, 60)
    events = client.events.read(job.job_id)
    assert sum(e.type == "message.delta" for e in events) >= 2, "written as it streamed, not once at the end"
    assert deltas(events) == done.result.content


def test_a_reader_resuming_after_event_k_sees_the_rest_exactly_once(fleet, client):
    job = client.submit("resume me [[stream delay=0.02 words=40]]", sid("resume"), stream=True)
    head = []
    for event in client.stream(job.job_id, timeout=60):
        head.append(event)
        if len(head) == 3:
            break  # the reader disconnects after event 3
    rest = list(client.stream(job.job_id, after=3, timeout=60))
    assert [e.seq for e in rest] == list(range(4, 4 + len(rest)))
    whole = list(client.stream(job.job_id))
    assert head + rest == whole, "nothing missed, nothing repeated"
    assert list(client.stream(job.job_id, after=whole[-1].seq, timeout=5)) == [], "nothing after the end"
    assert client.events.read(job.job_id, after=1, count=2) == whole[1:3]


def test_chat_stream_and_a_provider_that_cannot_stream(fleet, client):
    events = list(client.chat("whole please [[nostream]]", session_id=sid("whole"), stream=True, timeout=60))
    assert [e.type for e in events] == ["job.started", "message.delta", "job.succeeded"]
    assert deltas(events) == events[-1].data["result"]["content"]


def test_a_retried_call_announces_itself_so_text_is_not_doubled(fleet, client):
    events = list(client.chat("cut me off [[cut after=4 n=1]] [[stream delay=0.01]]", session_id=sid("cut"),
                              stream=True, timeout=60))
    retry = next(i for i, e in enumerate(events) if e.type == "provider.retry")
    assert events[retry].data["error"]["type"] == "ProviderConnectionError"
    assert deltas(events[:retry]), "some text came before the stream broke"
    assert deltas(events[retry:]) == events[-1].data["result"]["content"], "after the retry: the whole reply once"
    assert events[-1].data["provider_retries"] == 1


def test_tool_calls_and_results_are_events(fleet, client):
    events = list(client.chat('[[tool:add {"a": 2, "b": 3}]]', session_id=sid("tools"), stream=True, timeout=60))
    call = next(e for e in events if e.type == "tool.call")
    result = next(e for e in events if e.type == "tool.result")
    assert call.data["name"] == "add" and call.data["id"] == result.data["id"]
    assert result.data["output"] == "5.0" and result.data["ok"] is True
    assert call.seq < result.seq < events[-1].seq


def test_an_expired_log_is_a_clear_error_and_the_job_is_still_there(fleet, client):
    job = client.chat("short-lived log", session_id=sid("gone"), timeout=60)
    client.r.delete(client.keys.events(job.job_id))
    with pytest.raises(EventsGone, match="expired"):
        list(client.stream(job.job_id, timeout=5))
    assert client.get(job.job_id).status == "succeeded"


def test_a_worker_killed_mid_stream_restarts_the_job_once(make_fleet):
    fleet = make_fleet()
    doomed = fleet.start_worker(4)
    fleet.wait_ready(doomed)
    client = fleet.client()
    s = sid("kill")
    job = client.submit(f"survive this {SLOW}", s, stream=True)
    first_event(client, job.job_id, "message.delta")
    fleet.kill(doomed)
    fleet.start_worker(4)
    events = list(client.stream(job.job_id, timeout=90))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    restart = next(i for i, e in enumerate(events) if e.type == "job.restarted")
    assert events[restart].data["attempt"] == 2
    assert deltas(events[:restart]), "the first attempt had shown text"
    assert events[-1].type == "job.succeeded"
    assert deltas(events[restart:]) == events[-1].data["result"]["content"], "the second attempt is whole"
    history = client.get_session(s).messages
    assert [m.role for m in history] == ["user", "assistant"], "the turn is appended once"
    assert history[1].content == events[-1].data["result"]["content"]


def test_stopping_a_running_turn_closes_the_provider_stream_and_keeps_the_partial_reply(fleet, client, fake_openai):
    s = sid("stop")
    text = f"stop me {uuid.uuid4().hex[:6]} {SLOW}"
    job = client.submit(text, s, stream=True)
    later = client.submit("and then this", s)
    first_event(client, job.job_id, "message.delta")
    asked = time.time()
    assert client.cancel(job.job_id).cancel == "keep"
    done = client.wait(job.job_id, 10)
    assert done.status == "cancelled" and done.error.type == "Cancelled"
    stream = _closed_stream(fake_openai, text)
    assert stream["ended"] - asked < 1.0, "the provider call is stopped within a second"
    events = list(client.stream(job.job_id))
    assert events[-1].type == "job.cancelled" and events[-1].data["status"] == "cancelled"
    assert client.wait(later.job_id, 30).status == "succeeded", "the session's next message runs"
    history = client.get_session(s).messages
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    partial = history[1]
    assert partial.metadata["cancelled"] is True and partial.content == deltas(events) == done.result.content
    assert 0 < len(partial.content) < len(client.get(later.job_id).result.content) * 10
    assert client.cancel(job.job_id).status == "cancelled", "a repeat is fine"


def _closed_stream(server, text: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in server.streams(text) if s["outcome"] == "closed"]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"the test server never saw the stream closed: {server.streams(text)}")


def test_stopping_during_a_retry_back_off(make_fleet):
    fleet = make_fleet(provider_backoff_max="30")
    fleet.wait_ready(fleet.start_worker(4))
    client = fleet.client()
    job = client.submit("[[fault:429 n=50 retry_after=20]] wait for it", sid("backoff"))
    deadline = time.monotonic() + 30
    while client.get(job.job_id).provider_retries < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.cancel(job.job_id, rollback=True)
    done = client.wait(job.job_id, 5)
    assert done.status == "cancelled" and "rolled back" in done.error.message
    assert client.get_session(job.session_id).messages == [], "rollback: no trace of the turn"


@pytest.mark.parametrize("mode", ["interrupt", "rollback"])
def test_double_texting_interrupt_and_rollback(fleet, client, mode):
    s = sid(mode)
    client.chat("first, finished", session_id=s, timeout=60)
    running = client.submit(f"second, to be stopped {SLOW}", s, stream=True)
    queued = client.submit("third, never run", s)
    first_event(client, running.job_id, "message.delta")
    newest = client.submit("fourth, instead", s, on_busy=mode)
    assert client.wait(newest.job_id, 30).status == "succeeded"
    assert client.get(running.job_id).status == "cancelled"
    assert client.get(queued.job_id).status == "cancelled"
    assert list(client.stream(queued.job_id))[-1].type == "job.cancelled"
    history = client.get_session(s).messages
    contents = [(m.role, m.content.split(" [[")[0] if m.role == "user" else None) for m in history]
    if mode == "interrupt":
        assert contents[:3] == [("user", "first, finished"), ("assistant", None), ("user", "second, to be stopped")]
        assert history[3].role == "assistant" and history[3].metadata["cancelled"] is True
        assert contents[4:] == [("user", "fourth, instead"), ("assistant", None)]
    else:
        assert contents == [("user", "first, finished"), ("assistant", None), ("user", "fourth, instead"),
                            ("assistant", None)]


def test_a_stopped_turn_never_keeps_a_tool_call_without_its_result():
    asked = Message(role="assistant", content=None, tool_calls=[
        ToolCall(id="a", function=FunctionCall(name="add", arguments="{}")),
        ToolCall(id="b", function=FunctionCall(name="slow", arguments="{}"))])
    turn = Turn([Message(role="user", content="hi"), asked,
                 Message(role="tool", content="5", tool_call_id="a")])
    kept = turn.stopped({"cancelled": True})
    assert [m.role for m in kept] == ["user", "assistant", "tool"]
    assert [tc.id for tc in kept[1].tool_calls] == ["a"], "the call that never ran is dropped"
    turn = Turn([Message(role="user", content="hi"), asked])
    assert [m.role for m in turn.stopped({})] == ["user"], "an assistant message of unrun calls only goes"
    turn.partial = ["Partial ", "answer"]
    assert turn.stopped({"cancelled": True})[-1].model_dump(include={"role", "content", "metadata"}) == {
        "role": "assistant", "content": "Partial answer", "metadata": {"cancelled": True}}


def test_the_event_writer_coalesces_and_keeps_order():
    """Unit: deltas inside one interval become one write; other events flush the text before them;
    every job's pending events go in one flush; what is left at the end goes to the commit instead
    of a write of its own; a write refused (the lease lost) ends the job's writes, and a stop flag
    in a write's reply reaches the run."""
    from chatq.worker.event_writer import EventFlusher
    from chatq.worker.pacer import Pacer

    flushes: list[list[tuple[str, list[tuple[str, str]]]]] = []
    replies = {"j": (True, ""), "k": (True, "keep")}

    class Calls:  # an emit's KEYS and ARGV, as the session machine's: here the job ID, then the events
        def emit(self, session_id, job_id, token, events):
            return [job_id], [x for e in events for x in e]

    class Machine:
        calls = Calls()

    async def emit_many(writes):
        flushes.append([(keys[0], list(zip(args[::2], args[1::2]))) for _, keys, args in writes])
        await asyncio.sleep(0)
        return [replies[keys[0]] for _, keys, _ in writes]

    async def scenario():
        flusher = EventFlusher(emit_many, Pacer(5))
        stops: list[str] = []
        writer = flusher.writer(Machine(), "s", "j", "t")  # type: ignore[arg-type]
        other = flusher.writer(Machine(), "s2", "k", "t", on_stop=stops.append)  # type: ignore[arg-type]
        writer.next_call()
        other.next_call()
        writer.delta("a")  # after a pause: at once
        await asyncio.sleep(0.01)
        for piece in "bcd":
            writer.delta(piece)  # within the interval: held
        other.delta("x")  # its first: at once, and takes the held text with it
        writer.event("tool.call", {"id": "1"})  # after "bcd"
        await asyncio.sleep(0.01)
        writer.delta("e")
        started = time.monotonic()
        rest = await writer.settle()  # does not wait out the 5 s interval
        writer.delta("late")
        replies["k"] = (False, "")
        other.event("tool.call", {"id": "2"})
        await asyncio.sleep(0.01)
        other.event("tool.call", {"id": "3"})  # the lease is lost: nothing more is written
        await asyncio.sleep(0.01)
        return rest, time.monotonic() - started, stops, await other.settle()

    rest, took, stops, other_rest = asyncio.run(scenario())
    assert flushes == [[("j", [("message.delta", '{"text":"a","call":1}')])],
                       [("j", [("message.delta", '{"text":"bcd","call":1}'), ("tool.call", '{"id":"1"}')]),
                        ("k", [("message.delta", '{"text":"x","call":1}')])],
                       [("k", [("tool.call", '{"id":"2"}')])]]
    assert rest == [("message.delta", '{"text":"e","call":1}')], "the tail goes with the commit"
    assert took < 4, "the end of the run cuts the coalescing wait short"
    assert stops == ["keep"], "a stop flag in a write's reply reaches the run"
    assert other_rest == [], "a writer that lost the lease hands nothing to a commit"


def test_an_unfollowed_writer_holds_its_text_and_paces_reads_slowly_until_a_reader_follows():
    """Unit: unfollowed, text waits for the commit, and the provider's reads wait longer as the reply
    ages (a young one's as often as a followed one's); a follower ends such a wait at once and gets
    the text so far in one write, then the process's clock."""
    from chatq.worker.event_writer import EventFlusher, IdleReads
    from chatq.worker.pacer import Pacer

    flushes: list[list[tuple[str, str]]] = []

    class Calls:
        def emit(self, session_id, job_id, token, events):
            return [job_id], [x for e in events for x in e]

    class Machine:
        calls = Calls()

    class Socket:  # the provider reply's transport, as far as a wait uses it
        def __init__(self):
            self.calls: list[str] = []

        def pause_reading(self):
            self.calls.append("pause")

        def resume_reading(self):
            self.calls.append("resume")

        def is_closing(self):
            return False

    async def emit_many(writes):
        flushes.append([(args[0], args[1]) for _, _, args in writes])
        return [(True, "")] * len(writes)

    async def scenario():
        young = EventFlusher(emit_many, Pacer(0.01)).writer(Machine(), "s", "y", "t", followed=False)  # type: ignore[arg-type]
        young.delta("just begun")
        young_socket = Socket()
        await asyncio.wait_for(young.pace(young_socket), 1)  # a young reply: read on the process's clock
        flusher = EventFlusher(emit_many, Pacer(0.01), idle=IdleReads(share=1000, cap=30))
        writer = flusher.writer(Machine(), "s", "j", "t", followed=False)  # type: ignore[arg-type]
        writer.next_call()
        writer.delta("so ")
        writer.delta("far")
        await asyncio.sleep(0.05)
        held = list(flushes)
        socket = Socket()
        read = asyncio.ensure_future(writer.pace(socket))  # the provider's next read: the 30 s clock
        await asyncio.sleep(0.05)
        waited_slow, paused_while = not read.done(), socket.calls[:]
        started = time.monotonic()
        writer.follow()
        await read
        woke_after = time.monotonic() - started
        await asyncio.sleep(0.05)
        writer.delta(" and on")
        fast = asyncio.ensure_future(writer.pace(socket))
        await asyncio.wait_for(fast, 1)  # the 10 ms clock now, the socket left alone
        return held, waited_slow, paused_while, socket.calls, woke_after, await writer.settle(), young_socket.calls

    held, waited_slow, paused_while, socket_calls, woke_after, rest, young_calls = asyncio.run(scenario())
    assert young_calls == ["pause", "resume"], "a young reply is read on the process's clock, its socket paused meanwhile"
    assert held == [], "no write while nobody follows"
    assert waited_slow, "an unfollowed read waits for the slow clock"
    assert paused_while == ["pause"] and socket_calls == ["pause", "resume"], \
        "the socket is paused during an unfollowed wait, and left alone once followed"
    assert woke_after < 0.5, "a follower ends that wait at once"
    assert flushes[0] == [("message.delta", '{"text":"so far","call":1}')], "the text so far, in one write"
    assert "".join(e for batch in flushes for t, e in batch if t == "message.delta").count("and on") + \
        sum(d.count("and on") for _, d in rest) == 1, "the rest goes live or with the commit, once"


def test_the_stream_clock_wakes_its_waiters_before_its_listener_and_waits_for_a_slow_flush():
    """Unit: a tick wakes every waiter but a cancelled one, then tells its listener (the writer, whose
    flush must come after the readers' reads); ``rest`` puts the next tick one interval after it."""
    from chatq.worker.pacer import Pacer

    async def scenario():
        loop = asyncio.get_running_loop()
        pacer, order = Pacer(0.05), []
        pacer.on_tick = lambda: loop.call_soon(order.append, "listener")

        async def reader(name: str) -> None:
            await pacer.tick()
            order.append(name)

        readers = [asyncio.ensure_future(reader(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0)
        readers[1].cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.sleep(0)
        pacer.arm()
        armed = pacer._timer.when()
        await asyncio.sleep(0.01)
        pacer.rest()  # as if a slow flush came back just now: the armed tick moves to one interval on
        rested = pacer._timer.when()
        pacer._timer.cancel()
        return order, rested - armed

    order, moved = asyncio.run(scenario())
    assert order == ["a", "c", "listener"]
    assert moved > 0, "the tick waits one interval after the flush, not after it was armed"


def test_ctrl_c_in_chatq_chat_stops_the_turn(fleet, client):
    import os
    import signal
    import subprocess
    import sys

    s = sid("ctrl-c")
    proc = subprocess.Popen([sys.executable, "-m", "chatq", "chat", f"talk a while {SLOW}", "--session", s],
                            env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not client.get_session(s) or not client.get_session(s).pending_jobs:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    job_id = client.get_session(s).pending_jobs[0]
    first_event(client, job_id, "message.delta")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and f"job {job_id} cancelled" in err, err
    assert client.wait(job_id, 10).status == "cancelled"
    assert [m.role for m in client.get_session(s).messages] == ["user", "assistant"], "the partial reply is kept"
