"""Which callback URLs chatq will call: checked at the door by the client, again at each delivery.

Lives in the base so that every way in (Python, CLI, HTTP, batches) refuses the same URLs with the
same ``InvalidRequest``, and the webhook delivery reuses the same rule with DNS resolution.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from .errors import InvalidRequest

MAX_URL_CHARS = 2048
_PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


class WebhookRefused(InvalidRequest):
    """The callback URL is not one chatq will call."""


def check_destination(url: object, allow_private: bool, resolve: bool = True) -> str:
    """Return ``url`` if chatq may POST to it, else raise ``WebhookRefused``.

    Only absolute http(s) URLs of printable ASCII (an internationalized host or path must be
    encoded first, as the HTTP API's URL type does), and unless ``allow_private``, only hosts that
    are and resolve to public addresses. Without ``resolve`` only literal addresses and
    ``localhost`` are checked (cheap, for submission); the delivery checks again with DNS, at each
    attempt, so a name that later resolves to a private address is still refused.
    """
    if not isinstance(url, str):
        raise WebhookRefused(f"callback_url must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise WebhookRefused(f"callback_url is {len(url)} characters; the limit is {MAX_URL_CHARS}")
    if not set(url) <= _PRINTABLE_ASCII:
        raise WebhookRefused("callback_url must be printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise WebhookRefused(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("callback_url must be an http or https URL with a host")
    if allow_private:
        return url
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            raise WebhookRefused("callback_url points at localhost") from None
        if not resolve:
            return url
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"callback_url host {host} is a non-public address ({address}); "
                "CHATQ_WEBHOOK_ALLOW_PRIVATE=true allows it"
            )
    return url
