"""The ``ovs-overlay`` CNI plugin executable.

Runtimes exec it for every verb, and podman calls VERSION before each ADD and
DEL, so start-up must be fast: this module imports the standard library only.
VERSION is answered here without the agent; ADD, DEL, CHECK, STATUS and GC go to
the agent's CNI server (the CNI issue), and until then fail with a CNI error.
"""

from __future__ import annotations

import json
import os
import sys

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]

# Error codes of the CNI spec (SPEC.md, "Error").
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODE = 6


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_result(request: dict) -> dict:
    """The VERSION answer, in the request's version when we speak it."""
    asked = request.get("cniVersion")
    return {
        "cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def run(env: dict[str, str], stdin: str) -> dict:
    command = env.get("CNI_COMMAND")
    if not command:
        raise CniError(
            ERR_INVALID_ENV,
            "CNI_COMMAND is not set; set it to ADD, DEL, CHECK, VERSION, STATUS or GC",
        )
    try:
        request = json.loads(stdin) if stdin.strip() else {}
    except ValueError as exc:
        raise CniError(
            ERR_DECODE, f"the network configuration on stdin is not valid JSON: {exc}"
        ) from None
    if not isinstance(request, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin must be a JSON object")
    if command == "VERSION":
        return version_result(request)
    raise CniError(
        ERR_INVALID_ENV,
        f"CNI_COMMAND={command} is not supported by this build of ovs-overlay; "
        "only VERSION is available until the agent's CNI server lands",
    )


def main() -> int:
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    try:
        result = run(dict(os.environ), stdin)
    except CniError as err:
        try:
            asked = json.loads(stdin).get("cniVersion", LATEST)
        except (ValueError, AttributeError):
            asked = LATEST
        json.dump(err.to_json(asked if asked in SUPPORTED_VERSIONS else LATEST), sys.stdout)
        sys.stdout.write("\n")
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
