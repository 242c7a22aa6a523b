"""The agent's log lines as data: ``key=value`` pairs (the default) or one JSON object.

Every record is one line, whatever its message or traceback holds (newlines are escaped),
so a line is an event and a log shipper or ``grep`` never splits one.  A record's own
fields come as ``extra=fields(...)``: the CNI request line (controller/requestlog.py)
carries the container, pod, network, IP, duration and result that way, so they are
found by key instead of by parsing the sentence.

    time=2026-12-02T00:51:07.316Z level=info logger=controller.requestlog msg="attached
    c1/eth0 as 100.64.0.7 in 31 ms" cni=ADD container=c1 ifname=eth0 ... result=ok

Both launchers use it: ``ovs-overlay-agent`` installs it at start, and the app installs
it again when it reads its config, which is how it reaches ryu-manager's handlers.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Mapping

FORMATS = ("kv", "json")
_FIELDS = "ovs_overlay_fields"
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+,-]+$")  # printed without quotes


def fields(**values: object) -> dict:
    """``extra=`` for a log call: fields of that record (None values are left out)."""
    return {_FIELDS: {k: v for k, v in values.items() if v is not None}}


def _base(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, object]:
    stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
    out: dict[str, object] = {
        "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra: Mapping[str, object] = getattr(record, _FIELDS, {})
    for key, value in extra.items():
        out[key if key not in out else f"field_{key}"] = value
    if record.exc_info:
        out["exc"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    if record.stack_info:
        out["stack"] = record.stack_info
    return out


def kv_value(value: object) -> str:
    """One value as logfmt writes it: bare when it is a plain token, else a JSON string
    (quotes, backslashes and control characters escaped: one line, parseable)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if _BARE.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={kv_value(v)}" for k, v in _base(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_base(record, self), ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "kv":
        return KeyValueFormatter()
    raise ValueError(f"log_format {log_format!r} is not one of {', '.join(FORMATS)}; fix it")


def install(log_format: str, level: int | None = None) -> None:
    """Every handler of the root logger writes ``log_format`` (one to stderr is added if
    there is none); ``level`` sets the root logger's level."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    fmt = formatter(log_format)
    for handler in root.handlers:
        handler.setFormatter(fmt)
    if level is not None:
        root.setLevel(level)


def parse_kv(line: str) -> dict[str, str]:
    """A key=value line back into its fields (for tests and tools reading the log)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        raw = m.group(2)
        out[m.group(1)] = json.loads(raw) if raw.startswith('"') else raw
    return out
