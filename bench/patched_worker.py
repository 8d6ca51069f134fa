"""``chatq worker`` with bench prototype patches applied first: ``python -m bench.patched_worker
schema-cache,sdk-post worker -c 300 ...`` (see ``bench.patches``)."""

from __future__ import annotations

import sys

from bench import patches


def main() -> None:
    names = [n for n in sys.argv[1].split(",") if n]
    patches.apply(names, patches.WORKER)
    sys.argv = ["chatq", *sys.argv[2:]]
    from tasks.cli import main as chatq

    chatq()


if __name__ == "__main__":
    main()
