"""Audit of logins and of permission and role changes, wherever they are made (admin, shell,
seed): the signals fire inside the transaction of the change."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from guardian.models import GroupObjectPermission, UserObjectPermission

from orchestrator import events

from . import audit
from .models import Outcome

User = get_user_model()


@receiver(user_logged_in)
def _login(sender, request, user, **kwargs):
    audit.record(user, "auth.login", user)


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    username = str(credentials.get("username", ""))[:150]
    audit.record(
        username or None, "auth.login_failed", ("user", "", username), outcome=Outcome.FAILURE
    )


@receiver(m2m_changed, sender=User.groups.through)
def _groups_changed(sender, instance, action, pk_set, reverse, **kwargs):
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if reverse:  # group.user_set changed
        names = [instance.name]
        users = list(User.objects.filter(pk__in=pk_set or []))
    else:
        names = sorted(Group.objects.filter(pk__in=pk_set or []).values_list("name", flat=True))
        users = [instance]
    for user in users:
        audit.record(None, f"role.{action.removeprefix('post_')}", user, groups=names)
    _access_changed([u.pk for u in users])


@receiver(post_save, sender=User)
def _account_changed(sender, instance, created, update_fields=None, **kwargs):
    """Deactivated, or made (or no longer) a superuser: open connections re-decide. Saves
    that name other fields only (`last_login` on every login) are not announced."""
    if created:
        return
    if update_fields is None or {"is_active", "is_superuser"} & set(update_fields):
        _access_changed([instance.pk])


def _access_changed(user_ids) -> None:
    events.publish_access_changed(user_ids)


def _holders(obj) -> list[int]:
    """The users whose access an object permission decides."""
    if isinstance(obj, UserObjectPermission):
        return [obj.user_id]
    return list(User.objects.filter(groups=obj.group_id).values_list("pk", flat=True))


def _perm_details(obj) -> dict:
    holder = getattr(obj, "user", None) or getattr(obj, "group", None)
    return {
        "permission": obj.permission.codename,
        "holder": str(holder),
        "holder_type": "user" if isinstance(obj, UserObjectPermission) else "group",
        "object_type": obj.content_type.model,
        "object_id": obj.object_pk,
    }


@receiver(post_save, sender=UserObjectPermission)
@receiver(post_save, sender=GroupObjectPermission)
def _perm_granted(sender, instance, created, **kwargs):
    if created:
        audit.record(
            None, "permission.grant", ("permission", instance.pk, ""), **_perm_details(instance)
        )
        _access_changed(_holders(instance))


@receiver(post_delete, sender=UserObjectPermission)
@receiver(post_delete, sender=GroupObjectPermission)
def _perm_revoked(sender, instance, **kwargs):
    audit.record(
        None, "permission.revoke", ("permission", instance.pk, ""), **_perm_details(instance)
    )
    _access_changed(_holders(instance))
