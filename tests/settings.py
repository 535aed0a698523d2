"""Test settings: the real settings module, made fast (MD5 hasher, SQLite, in-memory channel
layer) unless DATABASE_URL / REDIS_URL point the integration run at real services."""

import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="clearway-test-")
os.environ.setdefault("CLEARWAY_VAR_DIR", _tmp)
# The settings create no directory on import; processes do at start (orchestrator.cli).
os.makedirs(os.path.join(os.environ["CLEARWAY_VAR_DIR"], "staticfiles"), exist_ok=True)
# A key of this test session's own for managed secrets (tests run with DEBUG off); in the
# environment, so the worker and server subprocesses of the integration tests share it.
if not os.environ.get("CLEARWAY_SECRET_KEYS"):
    from cryptography.fernet import Fernet

    os.environ["CLEARWAY_SECRET_KEYS"] = Fernet.generate_key().decode()

from orchestrator.settings import *  # noqa: E402,F403
from orchestrator.settings import CLEARWAY, DATABASES, REST_FRAMEWORK  # noqa: E402
from orchestrator.settings import STORAGES as _STORAGES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_tmp, "test.sqlite3")}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CLEARWAY = {
    **CLEARWAY,
    "WORKSPACE_ROOT": os.path.join(_tmp, "workspaces"),
    "HEARTBEAT_SECONDS": 1.0,
}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": _STORAGES["artifacts"],  # CLEARWAY_ARTIFACT_STORAGE, or the session's var/
}

# The suite sends many requests per minute as the same users; the throttle tests set the
# real rates back (tests/orchestrator/test_throttling.py).
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {
        scope: "100000/minute" for scope in REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    },
}
