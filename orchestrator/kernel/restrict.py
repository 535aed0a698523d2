"""`Model.objects.restrict(user, action)` on every domain model (NetBox's RestrictedQuerySet
shape), with the rule set in one place: governance.permissions registers its `restrict`
function here when the app is ready, and every RestrictedQuerySet calls it. Until a rule
set is registered every query is refused (fail closed), never allowed."""

from __future__ import annotations

from collections.abc import Callable

from django.db import models

_rules: list[Callable] = []


def register(rules: Callable[[models.QuerySet, object, str], models.QuerySet]) -> None:
    """Install the one rule set (governance.permissions.restrict)."""
    _rules[:] = [rules]


class RestrictedQuerySet(models.QuerySet):
    """A queryset that can narrow itself to what a user may do."""

    def restrict(self, user, action: str = "view") -> models.QuerySet:
        if not _rules:
            return self.none()
        return _rules[0](self, user, action)


RestrictedManager = models.Manager.from_queryset(RestrictedQuerySet)
