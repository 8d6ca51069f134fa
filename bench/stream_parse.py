"""What parsing one streamed reply costs in-process, way by way: where a streaming worker's CPU goes
(``bench/streaming.py`` measures the whole; py-spy showed most of it in the SDK's chunk models before
the worker got its own parser).

The test server's chunks for a reply of ``--words`` words (its ``stream_chunks``, the bytes it sends
as ``data:`` events), parsed ``--n`` times each way; CPU ms per reply (``time.process_time``):

- json: ``json.loads`` of every chunk, nothing else (the floor);
- chatq: what ``worker/provider.py``'s ``_read_stream`` runs: the bytes (a read per chunk) through
  ``SSELines``, each chunk ``json.loads`` and ``StreamAssembly.add``, the completion at the end;
- SDK chunks: what ``openai.AsyncStream`` does per chunk (``construct_type`` into a ``ChatCompletionChunk``);
- SDK chunks + assembler: and ``ChatCompletionStreamState.handle_chunk`` on each, the snapshot at the
  end: what the worker ran before its own parser (``1bffcb8``);
- pydantic chunks: ``ChatCompletionChunk.model_validate_json`` per chunk (validated, compiled);
- whole reply: the same reply unstreamed, ``ChatCompletion.model_validate_json`` once.

    .venv/bin/python -m bench.stream_parse [--words 125] [--n 50]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from chatq.testing.server import complete, stream_chunks
from chatq.worker.reply import SSELines, StreamAssembly


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--words", type=int, default=125)
    p.add_argument("--n", type=int, default=50, help="replies parsed each way")
    a = p.parse_args()
    completion = complete({"messages": [{"role": "user", "content": f"hello [[stream words={a.words}]]"}]})
    chunks = [json.dumps(c, separators=(",", ":")) for c in stream_chunks(completion, include_usage=True)[0]]
    whole = json.dumps(completion)
    wire = [f"data: {c}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]  # a read per chunk, as paced

    def chatq() -> None:
        lines, assembly = SSELines(), StreamAssembly()
        for data in wire:
            for payload in lines.feed(data):
                if payload.strip() != b"[DONE]":
                    assembly.add(json.loads(payload))
        assembly.completion()

    def sdk() -> None:
        for c in chunks:
            construct_type(type_=ChatCompletionChunk, value=json.loads(c))

    def sdk_assembled() -> None:
        state = ChatCompletionStreamState()
        for c in chunks:
            state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=json.loads(c)))
        state.current_completion_snapshot

    ways: list[tuple[str, Callable[[], object]]] = [
        ("json", lambda: [json.loads(c) for c in chunks]),
        ("chatq", chatq),
        ("SDK chunks", sdk),
        ("SDK chunks + assembler", sdk_assembled),
        ("pydantic chunks", lambda: [ChatCompletionChunk.model_validate_json(c) for c in chunks]),
        ("whole reply", lambda: ChatCompletion.model_validate_json(whole)),
    ]
    print(f"a reply of {a.words} words: {completion['usage']['completion_tokens']} tokens (4 characters each), "
          f"{len(chunks)} chunks; CPU ms per reply, median of {a.n}")
    for name, way in ways:
        way()  # warm: imports, pydantic's schema caches
        spent = []
        for _ in range(a.n):
            t0 = time.process_time()
            way()
            spent.append(time.process_time() - t0)
        ms = 1000 * sorted(spent)[len(spent) // 2]
        each = f"{1000 * ms / len(chunks):8.1f} us per chunk" if name != "whole reply" else ""
        print(f"  {name:<24} {ms:8.2f} ms   {each}")


if __name__ == "__main__":
    main()
