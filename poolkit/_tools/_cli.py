"""The ``poolkit`` command (also ``python -m poolkit``): look inside a program serving
:func:`poolkit.debug.serve`, or run the demo.

``poolkit dump URL``
    Print the program's tasks and threads (``--debug 1``: grouped by stack, the default;
    ``2``: each in full; ``json``).
``poolkit top URL``
    Watch its pools, channels, limiters and buckets, refreshed every ``--interval`` seconds;
    process pools also show their worker processes (PIDs, and how many crashed, were killed
    or were recycled).
``poolkit demo``
    Run the demo (its own options follow).

``URL`` is the server's address: ``http://127.0.0.1:6060``, ``127.0.0.1:6060``, or only the port
(``6060`` or ``:6060``), which means 127.0.0.1.  Requests
go straight to it: proxy settings in the environment are not used, since a debug endpoint is
normally on the same machine.  Exit status: 0 on success, 1 if the server could not be reached
or answered with an error, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from poolkit import __version__

__all__ = ["main"]

_PROG = "poolkit"


class _Failed(Exception):
    """The server could not be reached or answered with an error: a message for stderr."""


# ----------------------------------------------------------------------- arguments


def _base_url(text: str) -> str:
    url = text.strip()
    if url.isdigit() or (url.startswith(":") and url[1:].isdigit()):
        url = "127.0.0.1:" + url.lstrip(":")  # a bare port, as Go's tools take ":6060"
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// URL: {text!r}")
    return url.rstrip("/")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Look inside a program that serves poolkit.debug.serve(), or run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    url_help = "the debug server: http://127.0.0.1:6060, 127.0.0.1:6060, or a port (6060, :6060)"
    timeout_help = "seconds to wait for an answer (default: 5)"

    dump = commands.add_parser(
        "dump",
        help="print the program's tasks and threads",
        description="Print the tasks and threads of a program serving poolkit.debug.serve().",
    )
    dump.add_argument("url", metavar="URL", type=_base_url, help=url_help)
    dump.add_argument(
        "--debug",
        choices=("1", "2", "json"),
        default="1",
        help="1: grouped by identical stack (default); 2: every task and thread in full; "
        "json: the snapshot as JSON",
    )
    dump.add_argument("--timeout", type=_positive_seconds, default=5.0, help=timeout_help)

    top = commands.add_parser(
        "top",
        help="watch the program's pools, channels, limiters and buckets",
        description="Show the pools, channels, limiters and buckets of a program serving "
        "poolkit.debug.serve(), refreshed until Ctrl-C.  FAILED counts jobs that raised or "
        "timed out; JOBS/S is the rate of finished jobs since the previous refresh.  WORKER "
        "PROCESSES lists each process pool's worker PIDs and how many workers crashed, were "
        "killed (timeout, cancel) or were recycled.",
    )
    top.add_argument("url", metavar="URL", type=_base_url, help=url_help)
    top.add_argument(
        "--interval",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes (default: 1)",
    )
    top.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N refreshes (default: run until Ctrl-C)",
    )
    top.add_argument("--timeout", type=_positive_seconds, default=5.0, help=timeout_help)

    commands.add_parser(
        "demo",
        help="run the demo (its own options follow; see: poolkit demo --help)",
        add_help=False,  # --help belongs to the demo
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``poolkit`` command with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = _parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if args.command == "demo":
            from ._demo import main as demo_main

            return demo_main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as e:  # argparse's way out (--help, --version, a usage error)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        if args.command == "dump":
            return _dump(args.url, args.debug, args.timeout, sys.stdout)
        return _top(args.url, args.interval, args.count, args.timeout, sys.stdout)
    except _Failed as e:
        print(f"{_PROG} {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during a dump (top stops on it normally, with 0)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error.  Keep the interpreter from reporting
        # the same broken pipe again when it flushes stdout at exit.
        sys.stdout = None
        return 0


# ----------------------------------------------------------------------- fetching


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _reason(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _fetch(url: str, timeout: float) -> tuple[str, str]:
    """GET ``url``: (content type, body).  Raises :class:`_Failed` naming the URL and why."""
    request = urllib.request.Request(url, headers={"User-Agent": f"{_PROG}/{__version__}"})
    try:
        with _opener.open(request, timeout=timeout) as response:
            data = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as e:
        try:
            detail = e.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, http.client.HTTPException):
            detail = []
        finally:
            e.close()
        message = f"{url}: HTTP {e.code} {e.reason}"
        raise _Failed(message + (f": {detail[0]}" if detail else "")) from None
    except urllib.error.URLError as e:
        raise _Failed(f"cannot reach {url}: {_reason(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Failed(f"cannot read from {url}: {_reason(e)}") from None
    return content_type, data.decode(charset, "replace")


# ----------------------------------------------------------------------- dump


def _dump(base: str, debug: str, timeout: float, out: TextIO) -> int:
    content_type, body = _fetch(f"{base}/debug/tasks?debug={debug}", timeout)
    if content_type == "application/json":
        try:
            body = json.dumps(json.loads(body), indent=2)
        except ValueError:
            pass  # print it as it came
    out.write(body if body.endswith("\n") else body + "\n")
    out.flush()
    return 0


# ----------------------------------------------------------------------- top

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen

_POOL_COLUMNS = ("BUSY", "IDLE", "MAX", "QUEUED", "DONE", "FAILED", "CANCELLED", "JOBS/S")
_POOL_KINDS = {"pool": "asyncio", "thread_pool": "thread", "process_pool": "process"}
_PIDS_SHOWN = 16  # a process pool's line lists this many worker PIDs, then "+N more"

# For each kind, the statistics one line shows: (label, key, ...) - a missing key is skipped.
_LINES: dict[str, tuple[tuple[str, str], ...]] = {
    "channel": (
        ("buffered", "buffered"),
        ("capacity", "capacity"),
        ("senders waiting", "senders_waiting"),
        ("receivers waiting", "receivers_waiting"),
        ("sent", "items_sent"),
        ("received", "items_received"),
    ),
    "limiter": (
        ("borrowed", "borrowed"),
        ("total", "total"),
        ("waiting", "waiting"),
        ("acquired", "acquired_total"),
    ),
    "bucket": (
        ("tokens", "tokens"),
        ("burst", "burst"),
        ("rate/s", "rate"),
        ("waiting", "waiting"),
        ("granted", "granted_total"),
    ),
    "redis_bucket": (
        ("key", "key"),
        ("rate/s", "rate"),
        ("burst", "burst"),
        ("waiting", "waiting"),
        ("granted", "granted_total"),
        ("errors", "errors_total"),
    ),
    "redis_limiter": (
        ("key", "key"),
        ("held", "held"),
        ("total", "total"),
        ("waiting", "waiting"),
        ("acquired", "acquired_total"),
        ("lease lost", "lease_lost"),
        ("errors", "errors_total"),
    ),
    "per_key": (
        ("keys", "keys"),
        ("created", "created_total"),
        ("forgotten", "forgotten_total"),
        ("acquired", "acquired_total"),
    ),
}

_SECTION_TITLES = {
    "channels": "CHANNELS",
    "limiters": "LIMITERS",
    "buckets": "BUCKETS",
    "limits": "LIMITS",
    "per_keys": "PER-KEY LIMITS",
    "redis_buckets": "REDIS BUCKETS",
    "redis_limiters": "REDIS LIMITERS",
}


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.2f}"
    return "-" if value is None else str(value)


def _count(stats: Mapping[str, Any], *keys: str) -> int | None:
    """The sum of the integer statistics ``keys``, or ``None`` if none is there."""
    values = [stats[k] for k in keys if isinstance(stats.get(k), (int, float))]
    return int(sum(values)) if values else None


def _entries(data: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    entries = data.get(section)
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, Mapping)]


def _key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells a pool apart from one poll to the next."""
    return (entry.get("kind"), entry.get("seq"), entry.get("name"))


class _Top:
    """Frames of ``poolkit top``: remembers the previous poll to compute rates."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.previous: dict[tuple[Any, ...], tuple[float, int]] = {}

    def frame(self, data: Mapping[str, Any], now: float) -> str:
        clock = time.strftime("%H:%M:%S")
        lines = [f"{_PROG} top  {self.url}  {clock}  every {self.interval:g} s", ""]
        pools = _entries(data, "pools")
        lines += self._pools(pools, now)
        lines += _processes(pools)
        for section in (*_SECTION_TITLES, *(s for s in data if s not in _SECTION_TITLES)):
            if section == "pools":
                continue
            entries = _entries(data, section)
            if entries:
                lines += ["", _SECTION_TITLES.get(section, section.upper())]
                width = max(len(str(e.get("name", "?"))) for e in entries)
                lines += [self._line(e, width) for e in entries]
        return "\n".join(lines) + "\n"

    def _pools(self, pools: list[Mapping[str, Any]], now: float) -> list[str]:
        if not pools:
            return ["no pools"]
        rows: list[tuple[str, ...]] = []
        seen: dict[tuple[Any, ...], tuple[float, int]] = {}
        for entry in pools:
            stats = entry.get("statistics")
            stats = stats if isinstance(stats, Mapping) else {}
            done = _count(stats, "succeeded")
            failed = _count(stats, "failed", "timed_out")
            finished = _count(stats, "succeeded", "failed", "timed_out")
            rate = "-"
            if finished is not None:
                key = _key(entry)
                before = self.previous.get(key)
                if before is not None and now > before[0]:
                    rate = f"{(finished - before[1]) / (now - before[0]):.1f}"
                seen[key] = (now, finished)
            kind = _POOL_KINDS.get(str(entry.get("kind")), "?")
            rows.append(
                (
                    str(entry.get("name", "?")),
                    kind,
                    _number(stats.get("busy")),
                    _number(stats.get("idle")),
                    _number(stats.get("target_workers")),
                    _number(stats.get("queued")),
                    _number(done),
                    _number(failed),
                    _number(stats.get("cancelled")),
                    rate,
                )
                + (("closed",) if stats.get("closed") is True else ("",))
            )
        self.previous = seen
        header = ("POOL", "KIND", *_POOL_COLUMNS, "")
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def render(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:-1], widths[2:-1], strict=True)]
            return "  ".join([*cells, row[-1]]).rstrip()

        return [render(header), *(render(row) for row in rows)]

    def _line(self, entry: Mapping[str, Any], width: int) -> str:
        stats = entry.get("statistics")
        stats = stats if isinstance(stats, Mapping) else {}
        kind = str(entry.get("kind", ""))
        parts = [
            f"{label} {_number(stats[key])}"
            for label, key in _LINES.get(kind, ())
            if key in stats and not isinstance(stats[key], (Mapping, list))
        ]
        if kind == "limits":
            members = entry.get("members")
            if isinstance(members, list):
                names = [f"{m.get('kind')} {m.get('name')}" for m in members if isinstance(m, dict)]
                parts.append("members: " + (", ".join(names) or "-"))
        if not parts:  # a kind this version does not know: show whatever is simple
            parts = [
                f"{k} {_number(v)}"
                for k, v in stats.items()
                if k != "name" and not isinstance(v, (Mapping, list))
            ]
        if stats.get("closed") is True:
            parts.append("closed")
        return f"{str(entry.get('name', '?')).ljust(width)}  " + "  ".join(parts)


def _processes(pools: list[Mapping[str, Any]]) -> list[str]:
    """The WORKER PROCESSES section: one line per process pool, or nothing if there is none."""
    rows = []
    for entry in pools:
        stats = entry.get("statistics")
        if entry.get("kind") != "process_pool" or not isinstance(stats, Mapping):
            continue
        pids = stats.get("worker_pids")
        pids = [str(p) for p in pids] if isinstance(pids, list) else []
        shown = " ".join(pids[:_PIDS_SHOWN]) or "-"
        if len(pids) > _PIDS_SHOWN:
            shown += f" +{len(pids) - _PIDS_SHOWN} more"
        parts = [
            f"{label} {_number(stats.get(key))}"
            for label, key in (
                ("start", "start_method"),
                ("crashed", "crashed"),
                ("killed", "killed"),
                ("recycled", "recycled"),
            )
        ]
        rows.append((str(entry.get("name", "?")), "  ".join([*parts, f"pids {shown}"])))
    if not rows:
        return []
    width = max(len(name) for name, _ in rows)
    return ["", "WORKER PROCESSES", *(f"{name.ljust(width)}  {rest}" for name, rest in rows)]


def _top(base: str, interval: float, count: int | None, timeout: float, out: TextIO) -> int:
    url = f"{base}/debug/pools"
    tty = out.isatty()
    top = _Top(base, interval)
    shown = 0
    try:
        while True:
            _, body = _fetch(url, timeout)
            now = time.monotonic()
            try:
                data = json.loads(body)
            except ValueError:
                raise _Failed(f"{url}: the answer is not JSON") from None
            if not isinstance(data, Mapping):
                raise _Failed(f"{url}: the answer is not a JSON object")
            frame = top.frame(data, now)
            out.write(_CLEAR + frame if tty else frame + "\n")
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
