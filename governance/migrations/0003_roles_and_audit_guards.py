"""Seed the roles (Django groups with their model permissions), the audit chain head, and —
on PostgreSQL — triggers that refuse UPDATE, DELETE and TRUNCATE on the audit table."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from governance.roles import ensure_roles

GUARD_SQL = """
CREATE OR REPLACE FUNCTION clearway_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'governance_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS clearway_audit_no_update ON governance_auditevent;
CREATE TRIGGER clearway_audit_no_update BEFORE UPDATE OR DELETE ON governance_auditevent
    FOR EACH ROW EXECUTE FUNCTION clearway_audit_append_only();
DROP TRIGGER IF EXISTS clearway_audit_no_truncate ON governance_auditevent;
CREATE TRIGGER clearway_audit_no_truncate BEFORE TRUNCATE ON governance_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION clearway_audit_append_only();
"""

UNGUARD_SQL = """
DROP TRIGGER IF EXISTS clearway_audit_no_update ON governance_auditevent;
DROP TRIGGER IF EXISTS clearway_audit_no_truncate ON governance_auditevent;
DROP FUNCTION IF EXISTS clearway_audit_append_only();
"""


def seed(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    ensure_roles(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))
    AuditChainHead = apps.get_model("governance", "AuditChainHead")
    AuditChainHead.objects.get_or_create(pk=1)


def guard(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(GUARD_SQL, params=None)


def unguard(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNGUARD_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0002_initial"),
        ("orchestrator", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(seed, migrations.RunPython.noop),
        migrations.RunPython(guard, unguard),
    ]
