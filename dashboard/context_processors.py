from governance import permissions


def navigation(request):
    """What the navigation shows: links by role and the approvals badge count."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated:
        return {}
    from governance.models import Gate, GateStatus

    pending = permissions.restrict(
        Gate.objects.filter(status=GateStatus.WAITING), user, "approve"
    ).count()
    return {
        "nav": {
            "inbox_count": pending,
            "can_edit_policies": permissions.can_edit_policies(user),
            "can_view_audit": permissions.can_view_audit(user),
            "can_export": permissions.can_export(user),
        },
        "csp_nonce": getattr(request, "csp_nonce", ""),
    }
