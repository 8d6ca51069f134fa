"""The workload every contender runs, and the check of what each session ended up holding.

S sessions × M messages, all submitted up front, each session's in order. By default sessions
interleave at random (seeded), the way many users typing at once look to a backend, so a session
often has several messages queued behind each other; ``rounds`` sends every session's first
message, then every second one, and so on. The expected final
history is rebuilt with the test server's ``echo_reply``, whose replies hash the whole prior
history: a lost, duplicated or reordered turn changes every later reply. ``words`` asks the test
server for long replies (padded to that many words, streamed or not): the streaming benchmark's.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from chatq.testing.server import echo_reply, pad


@dataclass
class Workload:
    order: list[tuple[str, int]]  # (session, message index) in arrival order
    words: int = 0  # replies padded to this many words by the test server (``[[stream words=N]]``); 0: short

    @property
    def jobs(self) -> int:
        return len(self.order)

    @property
    def counts(self) -> dict[str, int]:
        """Messages per session, sessions in order of first arrival."""
        out: dict[str, int] = {}
        for sid, _ in self.order:
            out[sid] = out.get(sid, 0) + 1
        return out

    @property
    def shape(self) -> str:
        """"SxM" (sessions x messages), or "N jobs/S sessions" when sessions differ in length."""
        counts = set(self.counts.values())
        if len(counts) == 1:
            return f"{len(self.counts)}x{counts.pop()}"
        return f"{self.jobs}/{len(self.counts)}"

    @property
    def sessions(self) -> list[str]:
        return list(self.counts)

    def prefix(self, jobs: int) -> Workload:
        """The first ``jobs`` arrivals: the same traffic, cut short for a slow contender."""
        return Workload(self.order[:jobs], self.words)

    def text(self, session_id: str, index: int) -> str:
        return text(session_id, index, self.words)


def make(tag: str, sessions: int, messages: int, arrival: str = "random", seed: int = 7,
         words: int = 0) -> Workload:
    """``random``: sessions interleave at random; ``rounds``: every session's message 0, then every
    session's message 1, ... (many users in step)."""
    sids = [f"{tag}-s{i:05d}" for i in range(sessions)]
    if arrival == "rounds":
        return Workload([(sid, j) for j in range(messages) for sid in sids], words)
    arrivals = [sid for sid in sids for _ in range(messages)]
    random.Random(seed).shuffle(arrivals)
    seen: dict[str, int] = {}
    order = []
    for sid in arrivals:
        order.append((sid, seen.get(sid, 0)))
        seen[sid] = seen.get(sid, 0) + 1
    return Workload(order, words)


def text(session_id: str, index: int, words: int = 0) -> str:
    """The message; with ``words``, the test server's directive for a reply of that many words (the
    echo quotes the message without it)."""
    return f"message {index} of {session_id}" + (f" [[stream words={words}]]" if words else "")


def reply(history: list[dict[str, str]], words: int = 0) -> str:
    """The test server's reply to ``history`` (ending with the user's message)."""
    return pad(echo_reply(history), words) if words else echo_reply(history)


def expected(session_id: str, messages: int, words: int = 0) -> list[tuple[str, str]]:
    history: list[dict[str, str]] = []
    for j in range(messages):
        history.append({"role": "user", "content": text(session_id, j, words)})
        history.append({"role": "assistant", "content": reply(history, words)})
    return [(m["role"], m["content"]) for m in history]


@dataclass
class Check:
    lost: int = 0
    reordered: int = 0
    exact_sessions: int = 0

    def add(self, other: Check) -> None:
        self.lost += other.lost
        self.reordered += other.reordered
        self.exact_sessions += other.exact_sessions


def check(session_id: str, messages: int, actual: list[tuple[str, str | None]], words: int = 0) -> Check:
    """Compare one session's final (role, content) history with the expected one.

    lost: submitted turns absent from the history (or left without a reply).
    reordered: turns present out of submission order or more than once, plus replies computed over
    a different history than the one stored before them (the model saw turns in another order).
    """
    want = expected(session_id, messages, words)
    if actual == want:
        return Check(exact_sessions=1)
    index = {text(session_id, j, words): j for j in range(messages)}
    turns: list[tuple[int, bool]] = []  # (message index, reply consistent with the stored prefix)
    prefix: list[dict[str, str | None]] = []
    for i, (role, content) in enumerate(actual):
        if role != "user":
            prefix.append({"role": role, "content": content})
            continue
        prefix.append({"role": role, "content": content})
        answer = actual[i + 1][1] if i + 1 < len(actual) and actual[i + 1][0] == "assistant" else None
        if answer is not None:
            turns.append((index.get(content or "", -1), answer == reply(prefix, words)))
    present = {j for j, _ in turns}
    lost = sum(1 for j in range(messages) if j not in present)
    in_order = _longest_increasing([j for j, _ in turns])
    wrong_context = sum(1 for _, ok in turns if not ok)
    return Check(lost=lost, reordered=max(len(turns) - in_order, wrong_context))


def _longest_increasing(xs: list[int]) -> int:
    tails: list[int] = []
    for x in xs:
        i = bisect.bisect_left(tails, x)
        tails[i:i + 1] = [x]
    return len(tails)
