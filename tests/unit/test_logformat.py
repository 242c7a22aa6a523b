"""The agent's log lines parsed back: key=value and JSON carry the message, the record's
fields and a traceback, one line each, whatever the values hold."""

from __future__ import annotations

import io
import json
import logging

import pytest

from controller import logformat

AWKWARD = 'a "quoted" msg=with\nnewline, tab\t and ünïcode \\ backslash'


def emit(log_format: str, log) -> list[str]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logformat.formatter(log_format))
    logger = logging.getLogger(f"test.logformat.{log_format}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
    return out.getvalue().splitlines()


def request_line(logger) -> None:
    logger.warning(
        "attach of %s refused (CNI error %d): %s",
        "c1/eth0",
        4,
        AWKWARD,
        extra=logformat.fields(
            cni="ADD",
            container="c1",
            pod="kube-system/coredns-1",
            network="default",
            ip=None,  # left out
            duration_ms=12.5,
            result=4,
            error=AWKWARD,
            msg="a field named like a base key",
        ),
    )


def failure(logger) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("reconciler failed %s", "applying 3 change(s)")


def test_key_value_lines_parse_back_to_the_message_and_fields():
    [line] = emit("kv", request_line)
    got = logformat.parse_kv(line)
    assert got["level"] == "warning" and got["logger"] == "test.logformat.kv"
    assert got["msg"] == f"attach of c1/eth0 refused (CNI error 4): {AWKWARD}"
    assert got["error"] == AWKWARD
    assert got["field_msg"] == "a field named like a base key"
    assert (got["cni"], got["container"], got["pod"], got["network"]) == (
        "ADD",
        "c1",
        "kube-system/coredns-1",
        "default",
    )
    assert (got["duration_ms"], got["result"]) == ("12.5", "4")
    assert "ip" not in got
    assert line.startswith("time=") and got["time"].endswith("Z")
    assert " pod=kube-system/coredns-1 " in line  # plain tokens stay bare: grep finds them


def test_json_lines_parse_back_to_the_message_and_fields():
    [line] = emit("json", request_line)
    got = json.loads(line)
    assert got["msg"] == f"attach of c1/eth0 refused (CNI error 4): {AWKWARD}"
    assert got["error"] == AWKWARD and got["pod"] == "kube-system/coredns-1"
    assert got["duration_ms"] == 12.5 and got["result"] == 4
    assert "ip" not in got


@pytest.mark.parametrize("log_format", logformat.FORMATS)
def test_a_traceback_stays_on_the_records_one_line(log_format):
    [line] = emit(log_format, failure)
    got = logformat.parse_kv(line) if log_format == "kv" else json.loads(line)
    assert got["level"] == "error" and got["msg"] == "reconciler failed applying 3 change(s)"
    assert got["exc"].startswith("Traceback") and got["exc"].endswith("ValueError: boom")


def test_an_unknown_format_is_one_sentence():
    with pytest.raises(ValueError, match="log_format 'xml' is not one of kv, json"):
        logformat.formatter("xml")
