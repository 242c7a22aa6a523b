"""Kubernetes manifests as ``apply -f`` and ``delete -f`` read them: multi-document YAML
(or JSON), ``kind: List`` expanded, each object's namespace settled as kubectl settles it,
and every document checked before anything is written, so a file with one invalid
document changes nothing.  An error is one sentence naming the source, the document's
index (from 1), the object and the field and value at fault."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from store.k8s_objects import Kind, kind_of, stored_form

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Manifest:
    """One object of a file: where it came from, its kind, and the object (for ``apply``,
    its stored form, already validated)."""

    document: int
    kind: Kind
    namespace: str | None
    name: str
    obj: dict

    @property
    def display(self) -> str:
        """kubectl's ``networkpolicy.networking.k8s.io/deny-all``."""
        return f"{self.kind.group_name}/{self.name}"


def read_source(path: str, stdin_text: str | None = None) -> str:
    """The text of ``path`` (``-``: standard input, given as ``stdin_text``)."""
    if path == "-":
        return stdin_text or ""
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror}); fix the path") from None


def parse_manifests(
    text: str, source: str, namespace: str | None, validate: bool = True
) -> list[Manifest]:
    """The objects of ``text``, in order.  ``namespace`` is ``-n``: the namespace of objects
    that name none (else ``default``), and an object naming another is refused, as kubectl
    does.  With ``validate`` (``apply``) each object must be one the API server accepts;
    without (``delete``) only its kind, name and namespace are needed."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"{source} is not valid YAML{where} ({problem}); fix it") from None
    if not documents:
        raise ValueError(f"{source} holds no objects; give a file with at least one")
    out = []
    for index, doc in enumerate(documents, 1):
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        if not isinstance(items, list):
            raise ValueError(f"{source} document {index}: a List's items must be a list")
        for obj in items:
            out.append(_manifest(obj, source, index, namespace, validate))
    return out


def _manifest(
    obj: object, source: str, index: int, namespace: str | None, validate: bool
) -> Manifest:
    where = f"{source} document {index}"
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a {type(obj).__name__}, not an object with a kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    try:
        kind = kind_of(obj)
    except ValueError as exc:
        raise ValueError(f"{where} ({obj.get('kind')} {name}): {exc}") from None
    what = f"{where} ({kind.kind.lower()}{f' {name}' if isinstance(name, str) else ''})"
    if not isinstance(meta, dict) or not isinstance(name, str) or not name:
        raise ValueError(f"{what}: metadata.name is required")
    obj = {**obj, "metadata": dict(meta)}
    ns = None
    if kind.namespaced:
        ns = meta.get("namespace") or namespace or DEFAULT_NAMESPACE
        if namespace and ns != namespace:
            raise ValueError(
                f"{what}: metadata.namespace {ns!r} differs from -n {namespace}; drop -n or "
                "make them agree"
            )
        obj["metadata"]["namespace"] = ns
    if validate:
        try:
            _, obj = stored_form(obj)
        except ValueError as exc:
            raise ValueError(f"{source} document {index}: {exc}") from None
    return Manifest(index, kind, ns, name, obj)
