"""The roles Clearway ships: Django groups with their model permissions.

Used by a data migration and by the test suite (after a database flush)."""

from __future__ import annotations

ROLES: dict[str, list[str]] = {
    "viewer": ["orchestrator.view_pipeline"],
    "developer": ["orchestrator.add_pipeline"],
    "approver": ["orchestrator.view_pipeline"],
    "policy-admin": [
        "orchestrator.view_pipeline",
        "governance.add_policy",
        "governance.change_policy",
        "governance.view_policy",
        "governance.change_environment",
        "governance.view_environment",
    ],
    "compliance-manager": [
        "orchestrator.view_pipeline",
        "governance.view_auditevent",
        "governance.export_reports",
    ],
}


def ensure_roles(group_model, permission_model) -> None:
    """Create the role groups and give them their permissions (idempotent)."""
    for role, perms in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=role)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
