"""Where the cluster-state commands find the store, and how they print what they read.

``network``, ``host`` and ``endpoint`` take the store from one of:

- ``--store URL``: ``sqlite:///ABSOLUTE/PATH`` or ``etcd://HOST:PORT[,HOST:PORT...]``, with
  ``--etcd-cacert``, ``--etcd-cert``, ``--etcd-key`` (or the same in the URL's query as
  ``cacert=``, ``cert=``, ``key=``) for an etcd that speaks TLS;
- ``--lab L``: lab L's store, whichever kind it is (``lab.lab.open_lab_cluster`` reaches an
  etcd lab from the lab's operator namespace);
- ``--config FILE``: the same keys in a file, INI (section ``[ovs-overlayctl]``) or JSON
  (one object): ``store``, ``lab``, ``etcd-cacert``, ``etcd-cert``, ``etcd-key``,
  ``state-dir``.  An option on the command line wins over the file.

The options are accepted both before and after the subcommand
(``network --lab L list`` and ``network list --lab L``).
"""

from __future__ import annotations

import argparse
import configparser
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode

from lab import naming
from store import ClusterState, open_cluster

CONFIG_SECTION = "ovs-overlayctl"
CONFIG_KEYS = ("store", "lab", "etcd-cacert", "etcd-cert", "etcd-key", "state-dir")
TLS_KEYS = {"etcd_cacert": "cacert", "etcd_cert": "cert", "etcd_key": "key"}


def add_store_options(
    parser: argparse.ArgumentParser, leaf: bool = False, output: bool = True
) -> None:
    """The store and (unless not ``output``: a command with its own ``-o``) output options;
    on a subcommand (``leaf``) they default to nothing, so the same option given before the
    subcommand is kept."""

    def default(value):
        return argparse.SUPPRESS if leaf else value

    g = parser.add_argument_group("cluster state")
    g.add_argument("--store", default=default(None), help="sqlite:///PATH or etcd://HOST:PORT,...")
    g.add_argument("--lab", default=default(None), help="the store of this lab")
    g.add_argument("--config", default=default(None), help="a file with these options (INI/JSON)")
    g.add_argument("--etcd-cacert", default=default(None), help="CA that signed etcd's cert")
    g.add_argument("--etcd-cert", default=default(None), help="client certificate for etcd")
    g.add_argument("--etcd-key", default=default(None), help="the client certificate's key")
    g.add_argument(
        "--state-dir",
        default=default(None),
        help=f"where labs live (default {naming.DEFAULT_STATE_ROOT})",
    )
    if not output:
        return
    g.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=default("table"),
        help="a table for people (default) or JSON for programs",
    )


def read_config(path: str) -> dict[str, str]:
    """The options in ``path``: a JSON object, or INI with a ``[ovs-overlayctl]`` section."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(
            f"config file {path} cannot be read ({exc.strerror}); fix the path"
        ) from None
    if text.lstrip().startswith("{"):
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"config file {path} is not valid JSON ({exc}); fix it") from None
    else:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            raise ValueError(f"config file {path} is not valid INI ({exc}); fix it") from None
        if not parser.has_section(CONFIG_SECTION):
            raise ValueError(
                f"config file {path} has no [{CONFIG_SECTION}] section; put the options there"
            )
        values = dict(parser.items(CONFIG_SECTION))
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold one JSON object; fix it")
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"config file {path} has unknown option(s) {', '.join(unknown)}; "
            f"the options are {', '.join(CONFIG_KEYS)}"
        )
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"config file {path}: {key} must be a non-empty string")
    return {key.replace("-", "_"): value for key, value in values.items()}


def resolved_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The command line's store options over the config file's."""
    given = {k: getattr(args, k, None) for k in (k.replace("-", "_") for k in CONFIG_KEYS)}
    config = getattr(args, "config", None)
    if config is None:
        return given
    from_file = read_config(config)
    return {k: v if v is not None else from_file.get(k) for k, v in given.items()}


def store_url(store: str, tls: dict[str, str]) -> str:
    """``store`` with the TLS files in its query (where the etcd backend reads them)."""
    if not tls:
        return store
    if not store.startswith("etcd://"):
        raise ValueError(
            "--etcd-cacert, --etcd-cert and --etcd-key apply to an etcd:// store only; "
            "drop them or use an etcd:// URL"
        )
    base, _, query = store.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    twice = sorted({k for k, _ in pairs} & set(tls))
    if twice:
        raise ValueError(f"{', '.join(twice)} is given both in the URL and as an option; keep one")
    return base + "?" + urlencode([*pairs, *sorted(tls.items())], safe="/")


@contextmanager
def open_store(args: argparse.Namespace, fallback: str | None = None) -> Iterator[ClusterState]:
    """The cluster state the command's options name (else ``fallback``'s URL), open for
    the block."""
    opts = resolved_options(args)
    if fallback and not opts["store"] and not opts["lab"]:
        opts["store"] = fallback
    tls = {TLS_KEYS[k]: opts[k] for k in TLS_KEYS if opts[k]}
    if bool(opts["store"]) == bool(opts["lab"]):
        raise ValueError(
            "name the cluster state with exactly one of --store URL and --lab NAME "
            "(on the command line or in --config)"
        )
    if opts["lab"]:
        if tls:
            raise ValueError("--etcd-* options do not apply to --lab; the lab knows its store")
        # Here, not at the top: the lab brings OVSDB's client (eventlet) and pyroute2,
        # which a command on a --store never needs (ctl/main.py imports per command).
        from lab.lab import open_lab_cluster

        state_dir = opts["state_dir"] or naming.DEFAULT_STATE_ROOT
        with open_lab_cluster(naming.validate_lab_name(opts["lab"]), state_dir) as cluster:
            yield cluster
        return
    cluster = open_cluster(store_url(opts["store"], tls))
    try:
        yield cluster
    finally:
        cluster.close()


def emit(args: argparse.Namespace, headers: Sequence[str], rows: list[dict]) -> None:
    """Print ``rows`` (dicts keyed by ``headers``) as a table, or as a JSON list."""
    if getattr(args, "output", "table") == "json":
        print(json.dumps(rows, indent=2))
        return
    cells = [[h.upper().replace("_", " ") for h in headers]]
    cells += [[_cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
