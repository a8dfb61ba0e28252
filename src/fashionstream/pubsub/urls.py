"""Broker URLs: the syntax every scheme shares, and redaction of secrets.

A URL names one broker, topic or subscription on one backend, e.g.
`kafka://127.0.0.1:9092/images?group=service`. This module splits it into a
`ParsedURL` and rejects what no driver accepts; what the parts mean is each
driver's own grammar (`resource_names` in `drivers/<scheme>`). It also
produces text safe to log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from fashionstream.pubsub.driver import ParsedURL
from fashionstream.pubsub.errors import InvalidArgument

# Substrings that mark an option or query key as secret. Matched case-insensitively.
SECRET_MARKERS = ("password", "secret", "token", "credential", "sasl", "key.pem", "private")
# Keys the markers match that name a method, not a secret: their values are shown, and stay in
# error messages, where they say which login was refused.
PUBLIC_KEYS = frozenset({"sasl.mechanism", "sasl.mechanisms"})

REDACTED = "***"


def is_secret(key: str) -> bool:
    """True if the value stored under `key` must never appear in logs or errors."""
    lowered = key.lower()
    return lowered not in PUBLIC_KEYS and any(marker in lowered for marker in SECRET_MARKERS)


def redact(options: Mapping[str, object]) -> dict[str, object]:
    """A copy of `options` with secret values replaced by '***'."""
    return {k: (REDACTED if is_secret(k) else v) for k, v in options.items()}


def parse_url(raw: str) -> ParsedURL:
    """Split `raw` into scheme, host, path and query; duplicate query keys are errors.

    The host keeps its case (topic names are case-sensitive), and the path loses
    its leading slash: `kafka://h:9092/images` has path "images".
    """
    if not isinstance(raw, str):
        raise InvalidArgument(f"a broker URL must be a str, got {type(raw).__name__}")
    try:
        parts = urlsplit(raw)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket; not echoed, as it cannot be redacted
        raise InvalidArgument(f"not a broker URL: {err}") from None
    if not parts.scheme or "://" not in raw:
        from fashionstream.pubsub.drivers import schemes  # here, not above: the drivers package imports this one

        accepted = ", ".join(f"{scheme}://" for scheme in schemes())
        raise InvalidArgument(f"{safe_url(raw)!r} is not a broker URL; expected SCHEME://..., SCHEME one of {accepted}")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise InvalidArgument(f"query parameter {key!r} appears twice in {safe_url(raw)!r}")
        query[key] = value
    return ParsedURL(
        raw=raw,
        scheme=parts.scheme.lower(),
        host=parts.netloc,
        path=parts.path.lstrip("/"),
        query=query,
    )


def parse_reference(reference: str, scheme: str) -> ParsedURL | None:
    """`reference` parsed if it is a URL, which must then be a `scheme` URL; None for a plain name."""
    if "://" not in reference:
        return None
    parsed = parse_url(reference)
    if parsed.scheme != scheme:
        raise InvalidArgument(f"{safe_url(reference)!r} is not a {scheme}:// URL")
    return parsed


def check_port(port: str, raw: str) -> None:
    """Raise InvalidArgument naming the URL `raw` unless `port` is a TCP port number, 1 to 65535."""
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgument(f"invalid port {port!r} in {safe_url(raw)!r}; a port is a number from 1 to 65535")


def check_query(url: ParsedURL, accepted: Iterable[str], what: str) -> None:
    """Raise InvalidArgument naming the accepted parameters if `url` has any other."""
    allowed = frozenset(accepted)
    unknown = sorted(set(url.query) - allowed)
    if unknown:
        listed = ", ".join(sorted(allowed)) or "none"
        raise InvalidArgument(
            f"unknown query parameter(s) {', '.join(unknown)} in {what} URL {safe_url(url.raw)!r}; accepted: {listed}"
        )


def safe_url(raw: str) -> str:
    """`raw` with any password in the user-info part and secret query values replaced by '***'."""
    parts = urlsplit(raw)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = "&".join(
        f"{k}={REDACTED if is_secret(k) else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    # Text without "://" (not a URL, e.g. "localhost:9092") is shown as written, not as "localhost://9092".
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}" if "://" in raw else raw.split("?", 1)[0]
    return f"{rebuilt}?{query}" if query else rebuilt
