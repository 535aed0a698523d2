"""The client's address, decided by Clearway itself (audit log, lockout, throttles).

It is the socket's peer (REMOTE_ADDR) unless that peer is one of
settings.CLEARWAY_TRUSTED_PROXIES. Only then is X-Forwarded-For read, from the right: each
trusted proxy appends the address it saw, so the rightmost entry that is not a trusted proxy
is the client. Entries further left were written by the client and are never believed. The
ASGI server must not rewrite REMOTE_ADDR from the header itself (uvicorn without
--forwarded-allow-ips, daphne without --proxy-headers): docs/operations.md."""

from __future__ import annotations

import ipaddress

from django.conf import settings

_CACHE_ATTR = "clearway_client_ip"


def _address(value: str):
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:1234"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address, networks) -> bool:
    return any(address in network for network in networks)


def resolve(remote_addr: str | None, forwarded_for: str | None, networks) -> str | None:
    """The client address for a socket peer and an X-Forwarded-For header value."""
    peer = _address(remote_addr or "")
    if peer is None:
        return remote_addr or None
    if not networks or not forwarded_for or not _trusted(peer, networks):
        return str(peer)
    client = peer
    for entry in reversed(forwarded_for.split(",")):
        hop = _address(entry)
        if hop is None:  # garbage from further left: stop at the last hop we could trust
            break
        client = hop
        if not _trusted(hop, networks):
            break
    return str(client)


def client_ip(request) -> str | None:
    """The client address of a Django (or DRF) request; also AXES_CLIENT_IP_CALLABLE."""
    django_request = getattr(request, "_request", request)
    cached = getattr(django_request, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    meta = django_request.META
    address = resolve(
        meta.get("REMOTE_ADDR"),
        meta.get("HTTP_X_FORWARDED_FOR"),
        getattr(settings, "CLEARWAY_TRUSTED_PROXIES", []),
    )
    try:
        setattr(django_request, _CACHE_ATTR, address)
    except AttributeError:  # an object that takes no attributes (axes may pass an attempt)
        pass
    return address
