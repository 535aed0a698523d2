"""Orchestrator endpoints that are not pages: the signed webhook trigger."""

from __future__ import annotations

import json
import math

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from governance import audit, credentials, tokens
from governance.models import Outcome

from . import actions, spec
from .models import Pipeline, Trigger
from .throttles import TokenRateThrottle, WebhookRateThrottle

MAX_WEBHOOK_BODY = 64 * 1024
# actions.webhook_refusal's reason for a timestamp header that is not Unix seconds at all.
MALFORMED_TIMESTAMP = "X-Clearway-Timestamp must be the Unix time in whole seconds"


@csrf_exempt  # authenticated by the HMAC signature, not by a session
@require_POST
def webhook(request, slug: str):
    """Trigger a run: body `{"parameters": {...}}`, header
    `X-Clearway-Signature: sha256=<HMAC-SHA256 with the pipeline's secret>` over the body, or
    over `<timestamp>.<body>` with `X-Clearway-Timestamp: <Unix seconds>` — then the request
    is accepted only near the server's clock and only once (docs/security.md)."""
    throttle = WebhookRateThrottle()
    if not throttle.allow_request(request, None):
        # Not audited: a flood must not be able to flood the audit log as well.
        return _too_many(throttle.wait(), "too many webhook requests from this address")
    body = request.body
    # Checked first, for every slug: a signature over a cut-off body could never match, so a
    # large but genuine request would be told its signature is wrong.
    if len(body) > MAX_WEBHOOK_BODY:
        return JsonResponse({"message": "body too large (max 64 KiB)"}, status=413)
    pipeline = Pipeline.objects.filter(slug=slug).first()
    signature = request.headers.get("X-Clearway-Signature")
    timestamp = request.headers.get("X-Clearway-Timestamp")
    # Unknown pipeline and bad signature look the same from outside.
    reason = actions.webhook_refusal(pipeline, body, signature, timestamp)
    if reason:
        _refused(pipeline, slug, reason)
        shown = reason if reason.startswith(("X-Clearway", "missing X")) else ""
        message = shown or "invalid or missing signature"
        # A header that is not a timestamp at all is a malformed request, not a bad signature.
        malformed = reason == MALFORMED_TIMESTAMP
        return JsonResponse({"message": message}, status=400 if malformed else 403)
    try:
        payload = json.loads(body or b"{}")
    except ValueError as exc:
        return JsonResponse({"message": f"body is not valid JSON: {exc}"}, status=400)
    params = payload.get("parameters", {}) if isinstance(payload, dict) else None
    if not isinstance(params, dict):
        return JsonResponse({"message": '"parameters" must be an object'}, status=400)
    try:
        with transaction.atomic():
            if timestamp is not None and not actions.record_delivery(pipeline, signature):
                raise _Replayed
            run = actions.trigger_run(
                pipeline, actor=None, parameters=params, trigger=Trigger.WEBHOOK
            )
    except _Replayed:
        _refused(pipeline, slug, "replayed delivery")
        return JsonResponse(
            {"message": "this request was already received (same timestamp and signature)"},
            status=409,
        )
    except spec.ParameterError as exc:
        return JsonResponse({"message": str(exc), "errors": exc.errors}, status=400)
    except actions.ActionError as exc:
        return JsonResponse({"message": str(exc)}, status=409)
    return JsonResponse({"id": run.pk, "number": run.number, "status": run.status}, status=201)


class _Replayed(Exception):
    pass


def _too_many(wait: float | None, message: str) -> JsonResponse:
    seconds = max(1, math.ceil(wait or 1))
    response = JsonResponse({"message": f"{message}; try again in {seconds} s"}, status=429)
    response["Retry-After"] = str(seconds)
    return response


def _refused(pipeline: Pipeline | None, slug: str, reason: str) -> None:
    audit.record(
        None,
        "webhook.refused",
        ("pipeline", pipeline.pk if pipeline else "", slug),
        outcome=Outcome.DENIED,
        reason=reason,
    )


# The deprecation note of the token endpoint (docs/security.md "API tokens": migrating).
ENDPOINT_DEPRECATION_NOTE = (
    "POST /api/v1/auth/token/ is deprecated: it issues a new token with the scopes read and "
    "trigger only, for CLEARWAY_TOKEN_MAX_DAYS days, named 'token endpoint'. Create named "
    "tokens with the scopes you need on /accounts/tokens/ instead."
)


class _ObtainToken(APIView):
    """`POST {"username", "password"}` → `{"token", "scopes", "expires_at", "deprecation"}`:
    a new named token with the scopes read and trigger (deprecated; see
    ENDPOINT_DEPRECATION_NOTE). Authentication goes through django-axes, so repeated
    failures lock the account and the address out here too; the endpoint also has its own
    rate limit per address (TokenRateThrottle)."""

    throttle_classes = [TokenRateThrottle]
    permission_classes: list = []
    authentication_classes: list = []
    serializer_class = AuthTokenSerializer

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer(
                "IssuedToken",
                {
                    "token": serializers.CharField(),
                    "name": serializers.CharField(),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                    "expires_at": serializers.DateTimeField(),
                    "deprecation": serializers.CharField(),
                },
            )
        },
        deprecated=True,
    )
    def post(self, request, *args, **kwargs):
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        valid = serializer.is_valid()
        # axes flags the request it was given (DRF's wrapper), which its middleware never sees.
        if getattr(request, "axes_locked_out", False):
            response = JsonResponse(
                {
                    "message": "too many failed attempts: this account or address is locked out "
                    "for a while; try again later"
                },
                status=429,
            )
            response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME * 3600))
            return response
        if not valid:
            raise ValidationError(serializer.errors)
        user = serializer.validated_data["user"]
        now = timezone.now()
        token, raw = credentials.create_api_token(
            actor=user,
            name="token endpoint",
            scopes=[tokens.READ, tokens.TRIGGER],
            expires_at=now + tokens.max_lifetime(),
            now=now,
        )
        audit.record(user, "token.obtain", token, deprecated=True)
        response = Response(
            {
                "token": raw,
                "name": token.name,
                "scopes": token.scopes,
                "expires_at": token.expires_at,
                "deprecation": ENDPOINT_DEPRECATION_NOTE,
            }
        )
        response["Deprecation"] = "true"
        response["Link"] = '</accounts/tokens/>; rel="successor-version"'
        return response


obtain_token = _ObtainToken.as_view()


def server_error(request):
    """handler500: never a stack trace. A database that cannot be reached is a 503 (nothing
    was changed: the transaction did not commit), anything else a 500; JSON for the API."""
    import sys

    from django.db import DatabaseError, InterfaceError, OperationalError
    from django.http import HttpResponse
    from django.template import loader

    exc = sys.exc_info()[1]
    unavailable = isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DatabaseError) and "connect" in str(exc).lower()
    )
    status = 503 if unavailable else 500
    if request.path.startswith(("/api/", "/hooks/", "/healthz")):
        message = (
            "the database is unavailable; nothing was changed, try again shortly"
            if unavailable
            else "internal error; it was logged"
        )
        response = JsonResponse({"message": message}, status=status)
    else:
        # Rendered without the request: no context processor may touch the database.
        page = loader.render_to_string("503.html" if unavailable else "500.html")
        response = HttpResponse(page, status=status)
    if unavailable:
        response["Retry-After"] = "30"
    return response
