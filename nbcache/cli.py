"""The ``nbcache`` command: look into a cache directory from a terminal, draw its lineage, clear it, and
share it through the team cache (``push``, ``pull``, ``ls --remote``: ``teamsync.py``).

Every command reads ``--dir`` (default: ``$NBCACHE_DIR``, else ``./.nbcache``) and never creates it (but
``pull``, which fills it): a directory that is not there is an error with exit code 4, an unknown step one with
exit code 1, a usage error 2 (argparse's; and no team cache given), a team cache that fails 6, anything else 3.
``--json`` prints what scripts need instead of a table.

What the cache holds is never trusted to be well-formed or harmless: a history line that is no run is
skipped (and counted by ``info``), and every text printed is ``printable`` (a step named with a terminal
escape sequence shows it as ``\x1b[...``); ``--json`` escapes all that is not ASCII.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .cache import Cache
from .diskerrors import StoreError
from .diskstore import open_disk_store
from .eviction import size_limit_from_env
from .keys import load_key
from .records import StepRun
from .remote import REMOTE_ENV, Remote, RemoteError
from .store import Store
from .tables import (NO_STEPS, REMOTE_STEPS_HEADER, STEP_RUNS_HEADER, STEPS_HEADER, collected_text, info_text,
                     printable, remote_steps_rows, removed_text, step_runs_rows, step_summaries, steps_rows,
                     text_table, transfer_problems, transfer_text, verify_text, why_text)
from .teamsync import pull, push, remote_steps

__all__ = ["main"]

EXIT_UNKNOWN_STEP = 1
EXIT_USAGE = 2  # argparse's: a usage error (an unknown command or option, a malformed --older-than); no team cache
EXIT_FAILED = 3  # anything else: a bad output file name, Graphviz missing
EXIT_NO_CACHE = 4
EXIT_NOT_INTACT = 5  # verify found results that are not intact
EXIT_REMOTE = 6  # the team cache failed (unreachable, denied, no such bucket) or cannot be used as given

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _Failure(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` as seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 7d, 12h, 30m or 2w, not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _count(text: str) -> int:
    """``--keep-last``: a whole number, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of results to keep, such as 3, not {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help="cache directory (default: $NBCACHE_DIR, else ./.nbcache)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser = argparse.ArgumentParser(prog="nbcache", description="Cache notebook steps on disk.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = commands.add_parser("ls", parents=[common], help="the steps, with entry counts, sizes and last run")
    ls.add_argument("--remote", nargs="?", const="", metavar="URL",
                    help=f"the steps of the team cache instead (URL default: ${REMOTE_ENV})")
    show = commands.add_parser("show", parents=[common], help="a step's runs and keys")
    show.add_argument("step")
    why = commands.add_parser("why", parents=[common], help="what changed before a step's last run")
    why.add_argument("step")
    graph = commands.add_parser("graph", parents=[common], help="draw the lineage of every step to a file")
    graph.add_argument("-o", "--output", default="lineage.svg", help="file to write: .svg, .png or .pdf")
    clear = commands.add_parser("clear", parents=[common], help="remove cached results (the history stays)")
    clear.add_argument("step", nargs="?")
    clear.add_argument("--older-than", type=_duration, metavar="AGE", help="only results stored before AGE ago")
    clear.add_argument("--keep-last", type=_count, metavar="N",
                       help="keep each step's N most recently used results (stored or served), remove the others")
    commands.add_parser("info", parents=[common], help="the directory, its size and entry count")
    commands.add_parser("gc", parents=[common], help="remove files left behind by writers that were killed")
    verify = commands.add_parser("verify", parents=[common],
                                 help="read every stored result whole and check it (exit 5 if one is not intact)")
    verify.add_argument("--remove", action="store_true", help="remove the results that are not intact")
    for name, what in (("push", "upload the results the team cache does not have yet"),
                       ("pull", "download the team cache's results this directory does not have yet")):
        sync = commands.add_parser(name, parents=[common], help=what)
        sync.add_argument("step", nargs="?", help="only the results of this step")
        sync.add_argument("--remote", metavar="URL", help=f"the team cache (default: ${REMOTE_ENV})")
    demo = commands.add_parser("demo", help="run the digits pipeline twice; the second run changes the trainer")
    demo.add_argument("--dir", help="cache directory to use (default: a fresh temporary one)")
    demo.add_argument("-o", "--output", default="lineage.svg", help="where to write the lineage of run 2")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        try:
            team = args.command in ("push", "pull") or getattr(args, "remote", None) is not None
            return _team(args) if team else _run(args)
        except (_Failure, BrokenPipeError):
            raise
        except RemoteError as exc:  # unreachable, denied, a URL it cannot use: it says which (no credentials)
            raise _Failure(str(exc), EXIT_REMOTE) from exc
        except StoreError as exc:  # read-only, full, not ours, damaged: it says which, and what to do
            raise _Failure(str(exc), EXIT_FAILED) from exc
        except Exception as exc:  # anything else: say so, in one line
            raise _Failure(f"cannot use the cache at {_directory(args)}: {type(exc).__name__}: {exc}",
                           EXIT_FAILED) from exc
    except _Failure as failure:
        _say(f"nbcache: {failure}", file=sys.stderr)
        return failure.code
    except BrokenPipeError:  # `nbcache ls | head`: the reader left; stop quietly, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail
        return 141  # 128 + SIGPIPE, what a program killed by the broken pipe reports


def _demo(args: argparse.Namespace) -> int:
    """The demo is no part of this package: it is the module ``nbcache_demo`` (``examples/nbcache_demo.py``
    in the repository), which an editable install finds in ``examples/`` and the wheel carries."""
    try:
        import nbcache_demo
    except ModuleNotFoundError as exc:
        if exc.name != "nbcache_demo":
            raise
        print("nbcache demo: the demo is not installed; it is examples/nbcache_demo.py in nbcache's repository:"
              " in a clone of it, run pip install -e '.[demo]' && nbcache demo", file=sys.stderr)
        return 1
    return nbcache_demo.main(args.dir, args.output)


def _directory(args: argparse.Namespace) -> Path:
    """--dir, else what a step in this shell would use (``$NBCACHE_DIR``, else ``./.nbcache``)."""
    return Path(args.dir).expanduser().absolute() if args.dir else Cache().directory


def _existing(directory: Path) -> Store:
    """The store of the cache at ``directory``, which must be there (looking at it never makes one)."""
    if not (directory / "store").is_dir():
        raise _Failure(f"no cache at {directory}: run a step first, or point --dir or NBCACHE_DIR at one",
                       EXIT_NO_CACHE)
    return open_disk_store(str(directory))


def _run(args: argparse.Namespace) -> int:
    directory = _directory(args)
    store = _existing(directory)
    if args.command == "ls":  # (the last run of each step: the history is not read in full)
        return _ls(args, store)
    runs = store.read_runs()
    unreadable = store.unreadable_runs
    step = getattr(args, "step", None)
    if step is not None and step not in {r.step for r in runs}:
        known = {r.step for r in runs} | {e.step for _, e in store.entries()}
        if step not in known:
            hint = f"; known steps: {', '.join(sorted(known))}" if known else ""
            raise _Failure(f"no step named {step!r} in {directory}{hint}", EXIT_UNKNOWN_STEP)
    if args.command == "info":
        return _info(args, store, runs, unreadable)
    handler = {"show": _show, "why": _why, "graph": _graph, "clear": _clear, "gc": _gc, "verify": _verify}
    return handler[args.command](args, store, runs)


def _ls(args: argparse.Namespace, store: Store) -> int:
    summaries = step_summaries(store.last_runs(), ((step, size, kind) for step, kind, size in store.entry_sizes()))
    if args.json:
        return _print_json([{"step": s.step, "kind": s.kind, "entries": s.entries, "bytes": s.bytes,
                             "last": _run_json(s.last) if s.last else None} for s in summaries])
    _print_table(STEPS_HEADER, steps_rows(summaries), empty=NO_STEPS)
    return 0


def _show(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    mine = [r for r in runs if r.step == args.step]
    if args.json:
        return _print_json([_run_json(r) for r in mine])
    _print_table(STEP_RUNS_HEADER, step_runs_rows(mine), empty=f"{args.step} has no recorded runs")
    return 0


def _why(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    text = why_text(runs, args.step)
    if text is None:
        raise _Failure(f"step {args.step!r} has stored results but no recorded runs", EXIT_UNKNOWN_STEP)
    if args.json:
        last = next(r for r in reversed(runs) if r.step == args.step)
        return _print_json({"step": args.step, "reason": last.reason, "explanation": text})
    _say(text)
    return 0


def _graph(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    import graphviz  # (and the graph module, which imports it: only for this command)

    from .graph import DOT_HELP, build, to_dot

    lineage = build(runs, history=True)
    suffix = Path(args.output).suffix.lstrip(".").lower()
    if suffix not in ("svg", "png", "pdf"):
        raise _Failure(f"-o takes a .svg, .png or .pdf file, not {args.output!r}", EXIT_FAILED)
    try:
        data = to_dot(lineage).pipe(format=suffix)
    except graphviz.ExecutableNotFound:
        raise _Failure(DOT_HELP, EXIT_FAILED) from None
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise _Failure(f"cannot write {args.output}: {exc.strerror or exc}", EXIT_FAILED) from None
    if args.json:
        return _print_json({"output": str(Path(args.output).absolute()), "steps": len(lineage.nodes),
                            "edges": len(lineage.edges)})
    _say(f"wrote {args.output}: {len(lineage.nodes)} steps, {len(lineage.edges)} edges")
    return 0


def _clear(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    count = store.clear(args.step, older_than_s=args.older_than, keep_last=args.keep_last)
    if args.json:
        return _print_json({"removed": count})
    _say(removed_text(count, args.step))
    return 0


def _gc(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    if not callable(getattr(store, "gc", None)):
        raise _Failure(f"the store at {_directory(args)} cannot collect what is left behind", EXIT_FAILED)
    collected = store.gc()
    if args.json:
        return _print_json({"removed_files": collected.files, "freed_bytes": collected.bytes})
    _say(collected_text(collected))
    return 0


def _signing_key(what: str) -> bytes:
    key = load_key(make=False)  # (checking makes no key: with a new one, nothing would verify)
    if key is None:
        raise _Failure(f"no signing key to check {what} with: set NBCACHE_KEY or NBCACHE_KEY_FILE to the key its"
                       " values were signed with (see docs/trust.md)", EXIT_FAILED)
    return key


def _verify(args: argparse.Namespace, store: Store, runs: list[StepRun]) -> int:
    found = Cache(store=store, key=_signing_key("the cache").hex()).verify(remove=args.remove)
    if args.json:
        _print_json({"entries": found.entries, "values": found.values, "removed": args.remove,
                     "problems": [dataclasses.asdict(p) for p in found.problems]})
    else:
        _say(verify_text(found, removed=args.remove))
    return EXIT_NOT_INTACT if found.problems else 0


def _info(args: argparse.Namespace, store: Store, runs: list[StepRun], unreadable: int) -> int:
    stats = store.stats()
    unsigned = _unsigned_values(store)
    try:
        limit = size_limit_from_env()
    except ValueError as exc:
        raise _Failure(str(exc), EXIT_FAILED) from None
    if args.json:
        return _print_json({**stats.as_dict(), "runs": len(runs), "unreadable_history_lines": unreadable,
                            "unsigned_values": unsigned, "size_limit_bytes": limit})
    _say(info_text(stats, runs=len(runs), unreadable_runs=unreadable, unsigned=unsigned, size_limit=limit))
    return 0


def _team(args: argparse.Namespace) -> int:
    """``push``, ``pull``, ``ls --remote``: with the team cache of ``--remote``, else of ``NBCACHE_REMOTE``."""
    url = args.remote or os.environ.get(REMOTE_ENV)
    if not url:
        raise _Failure(f"no team cache given: set {REMOTE_ENV} or pass --remote URL (s3://bucket/prefix, or a folder"
                       " everyone mounts; see docs/team.md)", EXIT_USAGE)
    remote = Remote(url, strict=True)  # (a failure raises RemoteError: exit 6)
    return _ls_remote(args, remote) if args.command == "ls" else _transfer(args, remote)


def _ls_remote(args: argparse.Namespace, remote: Remote) -> int:
    steps, unreadable = remote_steps(remote)
    if unreadable:
        _say(f"nbcache: {unreadable} entries of {remote.url} do not read (damaged, or not nbcache's): not listed",
             file=sys.stderr)
    if args.json:
        return _print_json([dataclasses.asdict(s) for s in steps])
    _print_table(REMOTE_STEPS_HEADER, remote_steps_rows(steps), empty=f"{remote.url} holds no results yet")
    return 0


def _transfer(args: argparse.Namespace, remote: Remote) -> int:
    """``push`` or ``pull``: what it copied on stdout, what it did not (and why) on stderr; exit 0 either way."""
    pushed, directory = args.command == "push", _directory(args)
    store = _existing(directory) if pushed else open_disk_store(str(directory))  # (pull fills a new one)
    cache = Cache(store=store, key=_signing_key("the results" if pushed else "the team cache's results").hex())
    done = (push if pushed else pull)(cache, remote, args.step)
    if args.step is not None and args.step not in done.steps:
        where = f"in {directory}" if pushed else f"on {remote.url}"
        known = f"; its steps: {', '.join(sorted(done.steps))}" if done.steps else ""
        raise _Failure(f"no results of step {args.step!r} {where}{known}", EXIT_UNKNOWN_STEP)
    for problem in transfer_problems(done, pushed=pushed):
        _say(f"nbcache: {problem}", file=sys.stderr)
    if args.json:
        return _print_json({"remote": remote.url, "copied": done.copied, "values": done.values, "bytes": done.bytes,
                            "present": done.present, "refused": done.refused, "incomplete": done.incomplete,
                            **({} if pushed else {"unreadable": done.unreadable})})
    _say(transfer_text(done, pushed=pushed, remote=remote.url, step=args.step))
    return 0


def _unsigned_values(store: Store) -> int:
    """How many stored values a step would refuse: not signed with this user's key, damaged or missing. Their
    headers and pickles are read, never unpickled; the buffers are not read. Asking makes no key: a user who
    has none yet would get a new one from a step, which refuses them all."""
    addresses = sorted({b for _, entry in store.entries() for b in entry.blobs})
    key = load_key(make=False)
    if key is None:
        return len(addresses)
    cache = Cache(key=key.hex())
    return sum(not cache.is_signed(store, address) for address in addresses)


def _run_json(run: StepRun) -> dict[str, Any]:
    return {**json.loads(run.to_json()), "outcome": run.outcome}


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2, ensure_ascii=True))  # (control characters, lone surrogates: \u escapes)
    return 0


def _print_table(header: list[str], rows: list[list[Any]], *, empty: str) -> None:
    _say(text_table(header, rows) if rows else empty)


def _say(text: str, file: Any = None) -> None:
    """Print text for a person: whatever the cache held, nothing in it acts on the terminal."""
    print(printable(text, newlines=True), file=file or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
