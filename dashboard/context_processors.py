from functools import cached_property

from governance import permissions
from governance.models import Gate


class Navigation:
    """What the navigation shows: links by role and the approvals badge count. Lazy, so a
    partial that renders no navigation costs no query."""

    def __init__(self, user, *, inbox_count: int | None = None):
        self.user = user
        if inbox_count is not None:  # a page that counted the same gates already
            self.__dict__["inbox_count"] = inbox_count

    @cached_property
    def inbox_count(self) -> int:
        return Gate.objects.waiting_for(self.user).count()

    @cached_property
    def can_edit_policies(self) -> bool:
        return permissions.can_edit_policies(self.user)

    @cached_property
    def can_view_audit(self) -> bool:
        return permissions.can_view_audit(self.user)

    @cached_property
    def can_export(self) -> bool:
        return permissions.can_export(self.user)


def navigation(request):
    user = getattr(request, "user", None)
    context = {"csp_nonce": getattr(request, "csp_nonce", "")}
    if user is not None and user.is_authenticated:
        context["nav"] = Navigation(user)
    return context
