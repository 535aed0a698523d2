"""JSON errors for the API: always `{"message": ...}`, plus `errors` with line/column for bad
YAML or Rego."""

from __future__ import annotations

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler

from governance.rego import PolicyCompileError

from .spec import ParameterError, SpecError


def exception_handler(exc, context):
    if isinstance(exc, SpecError):
        return Response({"message": str(exc), "errors": exc.errors}, status=400)
    if isinstance(exc, ParameterError):
        return Response({"message": str(exc), "errors": exc.errors}, status=400)
    if isinstance(exc, PolicyCompileError):
        errors = [
            {
                "message": e.message,
                "file": e.file,
                "line": e.line,
                "column": e.column,
                "path": "source",
            }
            for e in exc.errors
        ]
        return Response({"message": str(exc), "errors": errors}, status=400)
    response = drf_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and "detail" in data and len(data) == 1:
        response.data = {"message": str(data["detail"])}
    elif response.status_code == status.HTTP_400_BAD_REQUEST and "message" not in (data or {}):
        response.data = {"message": "invalid request", "errors": data}
    return response
