"""`manage.py rotate_secret_keys`: re-encrypt every stored secret version with the first key
of CLEARWAY_SECRET_KEYS. Rotation: put a new key first (keep the old ones after it), run
this, then remove the old keys. Audited (secret.rotate_keys), as the system."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from governance import secrets


class Command(BaseCommand):
    help = "Re-encrypt every managed secret with the first key of CLEARWAY_SECRET_KEYS."

    def handle(self, *args, **opts):
        changed = secrets.rotate_keys(actor="manage.py rotate_secret_keys")
        self.stdout.write(f"Re-encrypted {changed} secret version(s) with the primary key.")
