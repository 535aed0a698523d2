"""Managed secrets: verbs and their audit rows (never the value), the refusal rules,
encryption at rest and key rotation."""

from __future__ import annotations

import sqlite3

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.db import connection
from guardian.shortcuts import assign_perm

from governance import secrets
from governance.models import AuditEvent, Secret, SecretVersion

pytestmark = pytest.mark.django_db

VALUE = 's3cr3t-Value with spaces/+&"quotes"-1f9e'


@pytest.fixture
def keeper(make_user, production, staging):
    """An ops person holding manage_secrets on production and staging."""
    user = make_user("kim", "developer")
    assign_perm("governance.manage_secrets", user, production)
    assign_perm("governance.manage_secrets", user, staging)
    return user


def audit_text() -> str:
    return " ".join(
        str(row) for row in AuditEvent.objects.values_list("action", "target_name", "details")
    )


def test_set_replace_rotate_delete_are_audited_with_name_and_version_never_the_value(
    keeper, production
):
    secret = secrets.set_secret(
        actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production
    )
    assert secret.version == 1
    secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE + "2", environment=production)
    secret.refresh_from_db()
    assert secret.version == 2
    assert list(secret.versions.values_list("number", flat=True)) == [2, 1]
    secrets.rotate_secret(actor=keeper, secret=secret)
    secrets.delete_secret(actor=keeper, secret=secret)
    rows = list(AuditEvent.objects.filter(action__startswith="secret.").order_by("seq"))
    assert [(r.action, r.details.get("version")) for r in rows] == [
        ("secret.create", 1),
        ("secret.update", 2),
        ("secret.rotate", 2),
        ("secret.delete", 2),
    ]
    assert all(r.details["name"] == "DB_PASSWORD" for r in rows)
    assert VALUE not in audit_text()
    assert not Secret.objects.exists() and not SecretVersion.objects.exists()


@pytest.mark.parametrize(
    ("name", "value", "rule", "words"),
    [
        ("db-password", "x", "name", "^[A-Z_][A-Z0-9_]*$"),
        ("1DB", "x", "name", "not starting with a digit"),
        ("BIG", "x" * (64 * 1024 + 1), "size", "at most 65536 bytes"),
        ("EMPTY", "", "value", "empty"),
    ],
)
def test_bad_input_is_refused_naming_the_secret_and_rule_and_audited(
    keeper, production, name, value, rule, words
):
    with pytest.raises(secrets.SecretRefused) as caught:
        secrets.set_secret(actor=keeper, name=name, value=value, environment=production)
    assert caught.value.rule == rule and words in str(caught.value)
    assert name[:20] in str(caught.value) or rule == "size"
    refused = AuditEvent.objects.get(action="secret.set", outcome="failure")
    assert refused.details["rule"] == rule and refused.details["name"] == name
    assert not Secret.objects.exists()


def test_a_value_of_exactly_64_kib_is_accepted(keeper, production):
    secrets.set_secret(actor=keeper, name="CERT", value="x" * 65536, environment=production)
    assert Secret.objects.get(name="CERT").version == 1


def test_without_manage_secrets_a_developer_is_refused_and_audited(developer, production):
    with pytest.raises(secrets.SecretRefused) as caught:
        secrets.set_secret(actor=developer, name="DB_PASSWORD", value=VALUE, environment=production)
    assert "manage_secrets" in str(caught.value) and "production" in str(caught.value)
    assert AuditEvent.objects.filter(
        action="secret.set", outcome="denied", details__rule="permission"
    ).exists()


def test_a_read_of_a_value_is_refused_for_everyone_and_audited(keeper, viewer, production):
    secret = secrets.set_secret(actor=keeper, name="TOKEN", value=VALUE, environment=production)
    for who in (viewer, keeper):
        refusal = secrets.refuse_read(actor=who, secret=secret)
        assert "write-only" in str(refusal) and "TOKEN" in str(refusal)
    assert AuditEvent.objects.filter(action="secret.read", outcome="denied").count() == 2


def test_values_are_encrypted_at_rest_the_database_file_holds_no_clear_value(keeper, production):
    secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production)
    version = SecretVersion.objects.get()
    assert VALUE not in version.ciphertext
    assert secrets.decrypt(version.ciphertext) == VALUE
    # The whole database as a dump, as an attacker with a copy of it would read it.
    dump = (
        "\n".join(sqlite3.connect(connection.settings_dict["NAME"]).iterdump())
        if (connection.vendor == "sqlite" and connection.settings_dict["NAME"] != ":memory:")
        else "\n".join(
            str(row) for row in SecretVersion.objects.values_list("ciphertext", "key_id")
        )
    )
    assert VALUE not in dump


def test_key_rotation_old_data_readable_new_writes_use_the_new_key(keeper, production, settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CLEARWAY = {**django_settings.CLEARWAY, "SECRET_KEYS": [old_key]}
    first = secrets.set_secret(
        actor=keeper, name="API_KEY", value="old-era", environment=production
    )
    old_id = secrets.key_id(old_key.encode())
    assert first.versions.get().key_id == old_id
    # A new key first: it encrypts; the old one still decrypts.
    settings.CLEARWAY = {**settings.CLEARWAY, "SECRET_KEYS": [new_key, old_key]}
    secrets.set_secret(actor=keeper, name="API_KEY", value="new-era", environment=production)
    v1, v2 = SecretVersion.objects.get(number=1), SecretVersion.objects.get(number=2)
    assert v1.key_id == old_id and v2.key_id == secrets.key_id(new_key.encode())
    assert secrets.decrypt(v1.ciphertext) == "old-era"
    assert secrets.rotate_keys(actor=keeper) == 1
    # Now the old key can go: everything was re-encrypted with the new one.
    settings.CLEARWAY = {**settings.CLEARWAY, "SECRET_KEYS": [new_key]}
    v1.refresh_from_db()
    assert v1.key_id == secrets.key_id(new_key.encode())
    assert secrets.decrypt(v1.ciphertext) == "old-era"
    rotated = AuditEvent.objects.get(action="secret.rotate_keys")
    assert rotated.details["reencrypted"] == 1
    assert "old-era" not in audit_text() and "new-era" not in audit_text()


def test_a_missing_key_is_a_clear_error_not_a_value(keeper, production, settings):
    settings.CLEARWAY = {
        **django_settings.CLEARWAY,
        "SECRET_KEYS": [Fernet.generate_key().decode()],
    }
    secrets.set_secret(actor=keeper, name="API_KEY", value=VALUE, environment=production)
    settings.CLEARWAY = {**settings.CLEARWAY, "SECRET_KEYS": [Fernet.generate_key().decode()]}
    with pytest.raises(secrets.SecretRefused) as caught:
        secrets.decrypt(SecretVersion.objects.get().ciphertext)
    assert "rotate_secret_keys" in str(caught.value) and VALUE not in str(caught.value)


def test_team_secrets_are_managed_by_the_teams_developers(developer, rival, team):
    secrets.set_secret(actor=developer, name="NPM_TOKEN", value=VALUE, team=team)
    with pytest.raises(secrets.SecretRefused):
        secrets.set_secret(actor=rival, name="NPM_TOKEN", value="x", team=team)
    assert Secret.objects.get(name="NPM_TOKEN").version == 1


@pytest.fixture
def rival(make_user, other_team):
    return make_user("omar", "developer", other_team.group.name)
