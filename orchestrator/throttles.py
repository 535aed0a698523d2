"""API rate limits (DRF throttling), keyed on the user or on the client address that
governance.client_ip decides — never on a raw X-Forwarded-For, which DRF's own get_ident
would read from anyone. Rates come from settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
(docs/configuration.md), read at each request so a changed setting takes effect; the 429
answer carries Retry-After (DRF adds it from wait())."""

from __future__ import annotations

from rest_framework import throttling
from rest_framework.settings import api_settings

from governance.client_ip import client_ip


class _Rates:
    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request):
        return client_ip(request) or "unknown"


class UserRateThrottle(_Rates, throttling.UserRateThrottle):
    """Every authenticated user, whatever address they come from (anonymous: by address)."""

    scope = "user"


class AddressRateThrottle(_Rates, throttling.SimpleRateThrottle):
    """Every client address, whoever is signed in (many tokens from one host count once)."""

    scope = "address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class TokenRateThrottle(AddressRateThrottle):
    """POST /api/v1/auth/token/: password guessing, on top of the axes lockout."""

    scope = "token"


class WebhookRateThrottle(AddressRateThrottle):
    """POST /hooks/<slug>/: unauthenticated until the signature is checked."""

    scope = "webhook"
