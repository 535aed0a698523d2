"""Managed secrets: encrypted at rest, write-only, scoped, released to a step only past the
gate (docs/security.md, "Managed secrets").

- Encryption: `cryptography`'s MultiFernet (AES-128-CBC + HMAC-SHA256, authenticated) over
  the keys of CLEARWAY_SECRET_KEYS — the first encrypts, every one decrypts. The keys live
  in settings, never in the database; each SecretVersion records the fingerprint of the
  key that encrypted it.
- Storage goes through a backend (`SecretBackend`): the database one is built here; a Vault
  one can implement the same three methods.
- Verbs (`set_secret`, `delete_secret`, `rotate_secret`, `rotate_keys`) take a keyword-only
  `actor`, run in one transaction and write one audit row with the name and the version —
  never the value. A refused attempt (bad name, value too large, no permission, a viewer
  asking for a value) raises SecretRefused naming the secret and the rule, and is audited.
- `release_for_step` decides, when a step starts, which of the secrets it asks for it gets.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from . import audit
from .models import Environment, GateStatus, Outcome, Secret, SecretVersion
from .permissions import restrict

NAME_RULE = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
MAX_VALUE_BYTES = 64 * 1024
MAX_NAME_LENGTH = 128
OPEN_GATE = (GateStatus.OPEN, GateStatus.OVERRIDDEN)


class SecretRefused(Exception):
    """A refused secret operation; the message names the secret and the rule."""

    def __init__(self, message: str, *, name: str = "", rule: str = ""):
        super().__init__(message)
        self.name = name
        self.rule = rule


# --- keys -------------------------------------------------------------------------------


def _keys() -> list[bytes]:
    keys = [k.strip().encode() for k in settings.CLEARWAY.get("SECRET_KEYS") or [] if k.strip()]
    if keys:
        return keys
    if settings.DEBUG:
        # Development only: a key derived from SECRET_KEY, so the demo works out of the box.
        digest = hashlib.sha256(b"clearway-secrets:" + settings.SECRET_KEY.encode()).digest()
        return [base64.urlsafe_b64encode(digest)]
    raise ImproperlyConfigured(
        "CLEARWAY_SECRET_KEYS is not set: managed secrets need at least one Fernet key. "
        'Make one with `python -c "from cryptography.fernet import Fernet; '
        'print(Fernet.generate_key().decode())"` and set CLEARWAY_SECRET_KEYS to it.'
    )


def key_id(key: bytes) -> str:
    """A key's fingerprint (safe to store and show: it does not reveal the key)."""
    return hashlib.sha256(b"clearway-key-id:" + key).hexdigest()[:16]


def _fernet() -> tuple[MultiFernet, str]:
    try:
        keys = _keys()
        fernets = [Fernet(k) for k in keys]
    except ValueError as exc:
        raise ImproperlyConfigured(
            "CLEARWAY_SECRET_KEYS holds a value that is not a Fernet key (32 url-safe "
            f"base64-encoded bytes): {exc}"
        ) from None
    return MultiFernet(fernets), key_id(keys[0])


def encrypt(value: str) -> tuple[str, str]:
    """(ciphertext, key id of the primary key)."""
    fernet, primary = _fernet()
    return fernet.encrypt(value.encode()).decode(), primary


def decrypt(ciphertext: str) -> str:
    fernet, _ = _fernet()
    try:
        return fernet.decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretRefused(
            "a secret cannot be decrypted with any key of CLEARWAY_SECRET_KEYS (was the key "
            "that encrypted it removed before `manage.py rotate_secret_keys`?)",
            rule="decryptable",
        ) from None


# --- backends ---------------------------------------------------------------------------


class SecretBackend(Protocol):
    """Where values live. The database backend stores Fernet ciphertext in SecretVersion;
    a Vault backend would store the value in Vault and a reference in the row."""

    def store(self, version: SecretVersion, value: str) -> None: ...
    def load(self, version: SecretVersion) -> str: ...
    def reencrypt(self, version: SecretVersion) -> bool: ...


class DatabaseBackend:
    """Values encrypted with CLEARWAY_SECRET_KEYS, in SecretVersion.ciphertext."""

    def store(self, version: SecretVersion, value: str) -> None:
        version.ciphertext, version.key_id = encrypt(value)

    def load(self, version: SecretVersion) -> str:
        return decrypt(version.ciphertext)

    def reencrypt(self, version: SecretVersion) -> bool:
        """Re-encrypt with the primary key; False if it already was."""
        fernet, primary = _fernet()
        if version.key_id == primary:
            return False
        version.ciphertext = fernet.rotate(version.ciphertext.encode()).decode()
        version.key_id = primary
        return True


def backend() -> SecretBackend:
    return import_string(settings.CLEARWAY["SECRETS_BACKEND"])()


# --- who may ----------------------------------------------------------------------------


def can_manage(user, *, environment: Environment | None = None, team=None) -> bool:
    """Environment secrets: `manage_secrets` on the environment (object or global
    permission). Team secrets: a developer of the team."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    if environment is not None:
        return restrict(
            Environment.objects.filter(pk=environment.pk), user, "manage_secrets"
        ).exists()
    return (
        team is not None
        and user.groups.filter(pk=team.group_id).exists()
        and user.has_perm("orchestrator.add_pipeline")
    )


# --- verbs ------------------------------------------------------------------------------


def _scope_text(environment, team) -> str:
    return f"environment {environment.name}" if environment is not None else f"team {team.slug}"


def _refuse(actor, action: str, name: str, rule: str, message: str, **details) -> SecretRefused:
    """Audit a refused attempt (committed even though the operation is not) and return the
    exception to raise. The value is never part of it."""
    denied = rule in ("permission", "write-only")
    with transaction.atomic():
        audit.record(
            actor,
            action,
            ("secret", "", name[:MAX_NAME_LENGTH]),
            outcome=Outcome.DENIED if denied else Outcome.FAILURE,
            name=name[:MAX_NAME_LENGTH],
            rule=rule,
            error=message,
            **details,
        )
    return SecretRefused(message, name=name, rule=rule)


def validate(name: str, value: str | None = None) -> tuple[str, str] | None:
    """(rule, message) of the first rule `name`/`value` break, None when they are fine."""
    if not isinstance(name, str) or not NAME_RULE.match(name) or len(name) > MAX_NAME_LENGTH:
        return (
            "name",
            f'secret name "{str(name)[:60]}" is not allowed: use uppercase letters, digits and '
            f'"_", not starting with a digit (^[A-Z_][A-Z0-9_]*$, at most {MAX_NAME_LENGTH})',
        )
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        return ("value", f"secret {name}: the value is empty — give the value to store")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        return (
            "size",
            f"secret {name}: the value is {size} bytes; at most {MAX_VALUE_BYTES} bytes "
            "(64 KiB) are allowed",
        )
    if "\x00" in value:
        return (
            "nul",
            f"secret {name}: the value contains a NUL character, which an "
            "environment variable cannot hold",
        )
    return None


def set_secret(
    *, actor, name: str, value: str, environment: Environment | None = None, team=None
) -> Secret:
    """Create the secret, or give it a new version with this value."""
    scope = {
        "environment": environment.name if environment else None,
        "team": team.slug if team else None,
    }
    if (environment is None) == (team is None):
        raise _refuse(
            actor,
            "secret.set",
            str(name),
            "scope",
            f"secret {name}: give exactly one scope, an environment or a team",
            **scope,
        )
    problem = validate(name, value)
    if problem:
        raise _refuse(actor, "secret.set", str(name), problem[0], problem[1], **scope)
    if not can_manage(actor, environment=environment, team=team):
        raise _refuse(
            actor,
            "secret.set",
            name,
            "permission",
            f"secret {name}: you may not manage the secrets of {_scope_text(environment, team)}"
            + (
                " (it needs the manage_secrets permission on the environment)"
                if environment
                else " (only developers of the team may)"
            ),
            **scope,
        )
    now = timezone.now()
    store = backend()
    with transaction.atomic():
        secret, created = Secret.objects.select_for_update().get_or_create(
            name=name, environment=environment, team=team, defaults={"created_at": now}
        )
        secret.version += 1
        secret.updated_at = now
        secret.updated_by = actor if getattr(actor, "pk", None) else None
        secret.save(update_fields=["version", "updated_at", "updated_by"])
        version = SecretVersion(
            secret=secret, number=secret.version, created_by=secret.updated_by, created_at=now
        )
        store.store(version, value)
        version.save()
        audit.record(
            actor,
            "secret.create" if created else "secret.update",
            secret,
            at=now,
            name=name,
            version=secret.version,
            key_id=version.key_id,
            **scope,
        )
    return secret


def delete_secret(*, actor, secret: Secret) -> None:
    """Delete the secret and every version of it. Pipelines naming it are refused at their
    next start (and at their next save)."""
    if not can_manage(actor, environment=secret.environment, team=secret.team):
        raise _refuse(
            actor,
            "secret.delete",
            secret.name,
            "permission",
            f"secret {secret.name}: you may not manage the secrets of {secret.scope_label}",
        )
    with transaction.atomic():
        locked = Secret.objects.select_for_update().get(pk=secret.pk)
        audit.record(
            actor,
            "secret.delete",
            locked,
            name=locked.name,
            version=locked.version,
            scope=locked.scope_label,
        )
        locked.delete()


def rotate_secret(*, actor, secret: Secret) -> int:
    """Re-encrypt every version of one secret with the primary key; how many changed."""
    if not can_manage(actor, environment=secret.environment, team=secret.team):
        raise _refuse(
            actor,
            "secret.rotate",
            secret.name,
            "permission",
            f"secret {secret.name}: you may not manage the secrets of {secret.scope_label}",
        )
    store = backend()
    with transaction.atomic():
        locked = Secret.objects.select_for_update().get(pk=secret.pk)
        changed = 0
        for version in locked.versions.select_for_update():
            if store.reencrypt(version):
                version.save(update_fields=["ciphertext", "key_id"])
                changed += 1
        audit.record(
            actor,
            "secret.rotate",
            locked,
            name=locked.name,
            version=locked.version,
            reencrypted=changed,
            key_id=_fernet()[1],
        )
    return changed


def rotate_keys(*, actor) -> int:
    """Re-encrypt every stored version with the primary key (after a new key was put first
    in CLEARWAY_SECRET_KEYS); then the old key can be removed. One audit row."""
    store = backend()
    with transaction.atomic():
        changed = 0
        for version in SecretVersion.objects.select_for_update().order_by("pk"):
            if store.reencrypt(version):
                version.save(update_fields=["ciphertext", "key_id"])
                changed += 1
        audit.record(actor, "secret.rotate_keys", None, reencrypted=changed, key_id=_fernet()[1])
    return changed


def refuse_read(*, actor, secret: Secret) -> SecretRefused:
    """Nobody reads a value back (values are write-only); the attempt is audited."""
    return _refuse(
        actor,
        "secret.read",
        secret.name,
        "write-only",
        f"secret {secret.name}: values are write-only — they are never shown again; set a "
        "new value to replace it",
    )


# --- release to a step ------------------------------------------------------------------


def scopes_for_team(team) -> dict[str, set[str] | None]:
    """What a pipeline of `team` may ask for (orchestrator.spec's `secrets=`): each name →
    the environments it belongs to, or None for a secret of the team (any stage)."""
    out: dict[str, set[str] | None] = {}
    rows = Secret.objects.filter(environment__isnull=False).values_list("name", "environment__name")
    for name, env_name in rows:
        scopes = out.setdefault(name, set())
        if scopes is not None:
            scopes.add(env_name)
    if team is not None:
        for name in Secret.objects.filter(team=team).values_list("name", flat=True):
            out[name] = None
    return out


@dataclass
class Released:
    env: dict[str, str]
    record: list[dict]  # [{"name", "version", "scope"}]: names and versions, no value


def release_for_step(
    names: list[str], *, stage, team_id: int | None, gate_status: str | None
) -> Released:
    """The values of the secrets a step asks for, at the moment it starts. An environment's
    secret only to a stage of that environment; a protected environment's only when the
    stage's gate is open (or overridden); a team's to any stage of the team's pipelines.
    Raises SecretRefused (naming the secret and the rule, never a value) otherwise — the
    step fails and is not started."""
    if not names:
        return Released({}, [])
    environment = stage.environment if stage.environment_id else None
    store = backend()
    env: dict[str, str] = {}
    record: list[dict] = []
    for name in names:
        secret = None
        if environment is not None:
            secret = Secret.objects.filter(name=name, environment=environment).first()
        if secret is None and team_id is not None:
            secret = Secret.objects.filter(name=name, team_id=team_id).first()
        if secret is None:
            elsewhere = Secret.objects.filter(name=name, environment__isnull=False).first()
            if elsewhere is not None:
                raise SecretRefused(
                    f"secret {name} belongs to environment {elsewhere.environment.name}; this "
                    f"stage targets {environment.name if environment else 'no environment'} "
                    "(rule: a secret of an environment is given only to stages that target it)",
                    name=name,
                    rule="scope",
                )
            raise SecretRefused(
                f"secret {name} does not exist (deleted since the pipeline was saved?) — "
                "create it again or remove it from the step's secrets",
                name=name,
                rule="exists",
            )
        if secret.environment_id and environment.protected and gate_status not in OPEN_GATE:
            raise SecretRefused(
                f"secret {name} of protected environment {environment.name} is released only "
                f"to a stage whose gate is open (the gate is {gate_status or 'missing'})",
                name=name,
                rule="gate",
            )
        version = secret.versions.get(number=secret.version)
        env[name] = store.load(version)
        record.append({"name": name, "version": version.number, "scope": secret.scope_label})
    return Released(env, record)
