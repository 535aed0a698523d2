"""Clearway settings: one module, read from the environment, with defaults that boot with
nothing set (SQLite in var/, embedded broker, in-process channel layer).

Every variable is listed in docs/configuration.md.

Importing this module has no side effect on the filesystem (a read-only image must be able to
import it): the directories under CLEARWAY_VAR_DIR are created by the processes that use
them, at start (orchestrator.cli.prepare_directories).
"""

import ipaddress
import os
from importlib import metadata
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# A source checkout (manage.py beside the apps) keeps its data in var/ of the checkout; an
# installed distribution has no such folder of its own, and uses ./var of where it runs.
_SOURCE_TREE = (BASE_DIR / "manage.py").is_file()
env = environ.Env()
VAR_DIR = Path(
    env.str("CLEARWAY_VAR_DIR", default=str(BASE_DIR / "var" if _SOURCE_TREE else Path("var")))
).absolute()

# The installed wheel carries templates/ and static/ inside the orchestrator package
# (pyproject.toml's package-dir mapping); a source checkout has them at its top level.
_PACKAGED = Path(__file__).resolve().parent
TEMPLATES_DIR = (
    _PACKAGED / "site_templates"
    if (_PACKAGED / "site_templates").is_dir()
    else BASE_DIR / "templates"
)
STATIC_DIR = (
    _PACKAGED / "site_static" if (_PACKAGED / "site_static").is_dir() else BASE_DIR / "static"
)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. With DEBUG off Clearway refuses to start without one: "
            "set SECRET_KEY to a long random value, e.g. "
            "`export SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))')`."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
try:  # the version lives in pyproject.toml only, and reaches us through the metadata
    CLEARWAY_VERSION = metadata.version("clearway")
except metadata.PackageNotFoundError:  # a checkout that was never installed
    CLEARWAY_VERSION = "0+unknown"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "channels",
    "guardian",
    "axes",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    "orchestrator",
    "governance",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "governance.middleware.SessionLifetimeMiddleware",  # after auth and messages
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "governance.middleware.RequestContextMiddleware",
    "governance.middleware.ContentSecurityPolicyMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "orchestrator.urls"
WSGI_APPLICATION = "orchestrator.wsgi.application"
ASGI_APPLICATION = "orchestrator.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [TEMPLATES_DIR],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.context_processors.navigation",
            ],
        },
    }
]

# --- Database ---------------------------------------------------------------------------
_SQLITE_URL = f"sqlite:///{VAR_DIR / 'clearway.sqlite3'}"
# An empty DATABASE_URL (`DATABASE_URL= make run`) means the default, as if it were unset.
DATABASES = {"default": env.db_url_config(os.environ.get("DATABASE_URL") or _SQLITE_URL)}
_ENGINES = ("django.db.backends.postgresql", "django.db.backends.sqlite3")
if DATABASES["default"].get("ENGINE") not in _ENGINES:
    raise ImproperlyConfigured(
        "DATABASE_URL is not a database Clearway runs on "
        f"(scheme {os.environ['DATABASE_URL'].split(':', 1)[0]!r}): it needs PostgreSQL, or "
        "SQLite for standalone mode. Use "
        "postgres://user:password@host:5432/name (production) or sqlite:////absolute/path.db, "
        "or leave it unset for the embedded SQLite database."
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; IMMEDIATE transactions take the
    # write lock up front so two writers queue on the busy timeout instead of deadlocking.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # PostgreSQL's JIT compiles the aggregates of the overview's metrics for ~100 ms
        # per query and wins nothing back on queries this short (benchmarks/pages.py).
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", "-c jit=off")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Broker, results, channel layer ------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ACKS_LATE = True
# The database holds every outcome; task results are only wanted where a caller waits.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# Worker logs go through LOGGING below (its format, request/task/run ids), not Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 defaults to a 5 s socket timeout, the same as channels_redis's
                # blocking wait for a consumer's next message: idle websockets then died
                # every ~5 s. The socket must outlive the wait.
                # redis-py's pool holds 100 connections by default: 200 live clients of one
                # server process exhausted it (benchmarks/LIVE_RESULTS.md).
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 30,
                        "socket_keepalive": True,
                        "max_connections": 1000,
                    }
                ],
                # A slow consumer loses messages silently past capacity; clients detect the
                # gap through sequence numbers and re-read over HTTP, but keep it roomy.
                "capacity": 1500,
                "expiry": 30,
                "group_expiry": 86400,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth -------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user object

AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
# The lockout counts the same client address as the audit log and the throttles.
AXES_CLIENT_IP_CALLABLE = "governance.client_ip.client_ip"

# --- Client address ---------------------------------------------------------------------
# Clearway decides the client's address itself: the socket's peer (REMOTE_ADDR), unless that
# peer is one of these proxies (CIDRs), whose X-Forwarded-For is then read from the right,
# skipping the trusted hops. Nobody else's X-Forwarded-For counts, 127.0.0.1's included.
if os.environ.get("AXES_IPWARE_PROXY_COUNT"):
    raise ImproperlyConfigured(
        "AXES_IPWARE_PROXY_COUNT is no longer read: list the addresses of your proxies in "
        "CLEARWAY_TRUSTED_PROXIES instead (comma-separated CIDRs, e.g. 10.0.0.0/24), and "
        "unset AXES_IPWARE_PROXY_COUNT. See docs/operations.md."
    )


def _networks(name: str) -> list:
    nets = []
    for item in env.list(name, default=[]):
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an IP address or network; use a comma-separated "
                "list such as 10.0.0.0/24,192.0.2.7"
            )
    return nets


CLEARWAY_TRUSTED_PROXIES = _networks("CLEARWAY_TRUSTED_PROXIES")

# --- DRF --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.api_auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # TokenScope: what an API token may do (its scopes); every API view declares what it
    # needs (`token_scopes`, governance/api_auth.py). Views that set permission_classes
    # start from this list.
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "governance.api_auth.TokenScope",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "orchestrator.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "orchestrator.api_errors.exception_handler",
    "DEFAULT_FILTER_BACKENDS": ["orchestrator.filters.FilterBackend"],
    # Per user (authenticated) or per client address (anonymous) for the whole API; the
    # token endpoint and the webhook have their own, tighter scopes (orchestrator/throttles).
    # A 429 carries Retry-After. Rates: N/second|minute|hour|day.
    "DEFAULT_THROTTLE_CLASSES": [
        "orchestrator.throttles.UserRateThrottle",
        "orchestrator.throttles.AddressRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("CLEARWAY_THROTTLE_USER", default="1200/minute"),
        "address": env.str("CLEARWAY_THROTTLE_ADDRESS", default="600/minute"),
        "token": env.str("CLEARWAY_THROTTLE_TOKEN", default="20/minute"),
        "webhook": env.str("CLEARWAY_THROTTLE_WEBHOOK", default="120/minute"),
    },
}
# Throttle counters live in this cache: with several web processes it must be shared
# (Redis when REDIS_URL is set), or each process counts alone.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "clearway",
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Clearway API",
    "DESCRIPTION": "Pipelines, runs, gates, policies, audit log and compliance reports.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "orchestrator.models.RunStatus",
        "StageStatusEnum": "orchestrator.models.StageStatus",
        "StepStatusEnum": "orchestrator.models.StepStatus",
        "TriggerEnum": "orchestrator.models.Trigger",
        "GateStatusEnum": "governance.models.GateStatus",
        "TierEnum": "governance.models.Tier",
        "EnforcementEnum": "governance.models.Enforcement",
        "OutcomeEnum": "governance.models.Outcome",
        "ApprovalDecisionEnum": "governance.models.ApprovalDecision",
        "ReportJobStatusEnum": "governance.models.ReportJob.Status",
    },
}

# --- i18n, static -----------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [STATIC_DIR]
STATIC_ROOT = VAR_DIR / "staticfiles"  # created at start: whitenoise warns when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = VAR_DIR / "media"


def _artifact_storage(spec: str) -> dict:
    """STORAGES["artifacts"] from CLEARWAY_ARTIFACT_STORAGE: a directory (FileSystemStorage)
    or s3://bucket/prefix?endpoint_url=…&region=… (django-storages' S3Storage; credentials
    from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance role)."""
    from urllib.parse import parse_qs, urlparse

    if not spec.startswith("s3://"):
        return {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": spec, "file_permissions_mode": 0o640},
        }
    parsed = urlparse(spec)
    if not parsed.netloc:
        raise ImproperlyConfigured(
            f"CLEARWAY_ARTIFACT_STORAGE={spec!r}: give the bucket, e.g. s3://clearway-artifacts/"
        )
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    options = {
        "bucket_name": parsed.netloc,
        "location": parsed.path.strip("/"),
        "file_overwrite": False,
        "default_acl": None,
        "querystring_auth": True,
    }
    if "endpoint_url" in query:
        options["endpoint_url"] = query["endpoint_url"]
    if "region" in query:
        options["region_name"] = query["region"]
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


# Artifacts of steps and archived step logs (docs/configuration.md, "Artifacts").
STORAGES["artifacts"] = _artifact_storage(
    env.str("CLEARWAY_ARTIFACT_STORAGE", default=str(VAR_DIR / "artifacts"))
)

# --- Email ------------------------------------------------------------------------------
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.filebased.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_FILE_PATH = VAR_DIR / "mail"
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="clearway@localhost")

# --- Security (production) --------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("SECURE_PROXY_SSL", default=False) else None
)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# --- Sessions and API tokens (docs/security.md "Sessions", "API tokens") ---------------
# A browser session ends after this long without a request (idle) and this long after
# sign-in whatever happens (absolute); governance.middleware.SessionLifetimeMiddleware ends
# it and audits why.
CLEARWAY_SESSION_IDLE_MINUTES = env.int("CLEARWAY_SESSION_IDLE_MINUTES", default=30)
CLEARWAY_SESSION_MAX_HOURS = env.int("CLEARWAY_SESSION_MAX_HOURS", default=12)
SESSION_COOKIE_AGE = CLEARWAY_SESSION_MAX_HOURS * 3600
# API tokens live at most this many days (an approve-scope token at most 24 h).
CLEARWAY_TOKEN_MAX_DAYS = env.int("CLEARWAY_TOKEN_MAX_DAYS", default=90)
# A step-up (today: the password re-entered) counts for this many minutes.
CLEARWAY_STEP_UP_MINUTES = env.int("CLEARWAY_STEP_UP_MINUTES", default=10)

# --- Clearway ---------------------------------------------------------------------------
CLEARWAY = {
    "WORKSPACE_ROOT": env.str("CLEARWAY_WORKSPACE_ROOT", default=str(VAR_DIR / "workspaces")),
    "LOG_CAP_BYTES": env.int("CLEARWAY_LOG_CAP_BYTES", default=5 * 1024 * 1024),
    "LOG_BATCH_SECONDS": env.float("CLEARWAY_LOG_BATCH_SECONDS", default=0.2),
    "LOG_BATCH_LINES": env.int("CLEARWAY_LOG_BATCH_LINES", default=50),
    "HEARTBEAT_SECONDS": env.float("CLEARWAY_HEARTBEAT_SECONDS", default=5.0),
    "HEARTBEAT_TIMEOUT": env.float("CLEARWAY_HEARTBEAT_TIMEOUT", default=30.0),
    "REAPER_INTERVAL": env.float("CLEARWAY_REAPER_INTERVAL", default=10.0),
    # How often beat refreshes the overview's metric rollups (orchestrator/rollups.py); the
    # tiles say how old their numbers are.
    "METRIC_ROLLUP_INTERVAL": env.float("CLEARWAY_METRIC_ROLLUP_INTERVAL", default=60.0),
    "POLICY_TIMEOUT": env.float("CLEARWAY_POLICY_TIMEOUT", default=2.0),
    # The largest policy-input artifact (e.g. a terraform plan) a gate parses (policy-input.md).
    "POLICY_INPUT_MAX_BYTES": env.int("CLEARWAY_POLICY_INPUT_MAX_BYTES", default=2 * 1024 * 1024),
    # Queue that step executions are sent to (empty: Celery's default queue).
    "STEP_QUEUE": env.str("CLEARWAY_STEP_QUEUE", default=""),
    "DEMO_PASSWORD": "clearway-demo" if DEBUG else None,
    "SITE_URL": env.str("CLEARWAY_SITE_URL", default="http://127.0.0.1:8000"),
    # Webhooks: a request with X-Clearway-Timestamp is signed over "<timestamp>.<body>",
    # accepted only within this many seconds of the server's clock, and only once.
    "WEBHOOK_TOLERANCE": env.int("CLEARWAY_WEBHOOK_TOLERANCE", default=300),
    # Refuse webhook requests without a timestamp (body-only signatures can be replayed).
    "WEBHOOK_REQUIRE_TIMESTAMP": env.bool("CLEARWAY_WEBHOOK_REQUIRE_TIMESTAMP", default=False),
    # Signed audit checkpoints (docs/audit.md): the Ed25519 private key (a PEM file that never
    # enters the database), the public key that verifies them (derived from the private key
    # when empty), where they are written, and how often.
    "AUDIT_SIGNING_KEY": env.str("CLEARWAY_AUDIT_SIGNING_KEY", default=""),
    "AUDIT_PUBLIC_KEY": env.str("CLEARWAY_AUDIT_PUBLIC_KEY", default=""),
    "AUDIT_CHECKPOINT_SINKS": env.list("CLEARWAY_AUDIT_CHECKPOINT_SINKS", default=[]),
    "AUDIT_CHECKPOINT_INTERVAL": env.float("CLEARWAY_AUDIT_CHECKPOINT_INTERVAL", default=300.0),
    # Optional RFC 3161 timestamps of checkpoints: the TSA's URL, and its root certificates.
    "AUDIT_TSA_URL": env.str("CLEARWAY_AUDIT_TSA_URL", default=""),
    "AUDIT_TSA_CA": env.str("CLEARWAY_AUDIT_TSA_CA", default=""),
    # Audit streaming to SIEMs (docs/audit.md): a JSON list of destinations.
    "AUDIT_STREAMS": env.json("CLEARWAY_AUDIT_STREAMS", default=[]),
    "AUDIT_STREAM_INTERVAL": env.float("CLEARWAY_AUDIT_STREAM_INTERVAL", default=10.0),
    "AUDIT_STREAM_BATCH": env.int("CLEARWAY_AUDIT_STREAM_BATCH", default=500),
    # Steps and policy evaluators run under bubblewrap (docs/security.md); without it they
    # fail closed. "off" runs them WITHOUT isolation: only on purpose, with a warning at
    # start, a banner on run pages and a mark on each run.
    "SANDBOX": env.str("CLEARWAY_SANDBOX", default="on").lower(),
    # Extra host paths hidden from steps (colon-separated), beside the built-in ones.
    "SANDBOX_HIDE": env.str("CLEARWAY_SANDBOX_HIDE", default=""),
    # A worker that is not root cannot give its steps a uid of their own: they would keep
    # the worker's uid on the host (inside a user namespace). It refuses to start unless
    # this is set on purpose (docs/security.md, "Step sandbox").
    "SANDBOX_ALLOW_WORKER_UID": env.bool("CLEARWAY_SANDBOX_ALLOW_WORKER_UID", default=False),
    # Root workers drop a step to uid/gid STEP_UID_BASE + run id % STEP_UID_RANGE.
    "STEP_UID_BASE": env.int("CLEARWAY_STEP_UID_BASE", default=200_000),
    "STEP_UID_RANGE": env.int("CLEARWAY_STEP_UID_RANGE", default=50_000),
    # Managed secrets (governance/secrets.py): Fernet keys, comma-separated, newest first —
    # the first encrypts, every one decrypts (rotation: put a new key first, run
    # `manage.py rotate_secret_keys`, then drop the old one). Never stored in the database.
    # With DEBUG on and none set, a development key is derived from SECRET_KEY.
    "SECRET_KEYS": env.list("CLEARWAY_SECRET_KEYS", default=[]),
    "SECRETS_BACKEND": env.str(
        "CLEARWAY_SECRETS_BACKEND", default="governance.secrets.DatabaseBackend"
    ),
    # Per-step resource limits: defaults (an environment may set its own) and the maximum a
    # pipeline may ask for with `limits:`.
    "STEP_LIMITS": {
        "memory_mb": env.int("CLEARWAY_STEP_MEMORY_MB", default=2048),
        "processes": env.int("CLEARWAY_STEP_PROCESSES", default=512),
        "cpu_seconds": env.int("CLEARWAY_STEP_CPU_SECONDS", default=3600),
    },
    # Artifacts (docs/pipelines.md): the largest file a step may store, and how many days a
    # run's artifacts and archived logs are kept unless its pipeline says `retention_days:`.
    "ARTIFACT_MAX_BYTES": env.int("CLEARWAY_ARTIFACT_MAX_BYTES", default=100 * 1024 * 1024),
    "ARTIFACT_RETENTION_DAYS": env.int("CLEARWAY_ARTIFACT_RETENTION_DAYS", default=90),
    # Finished runs' step logs move to the artifact storage as gzip (docs/dashboard.md);
    # "off" keeps them in the database. The index has an entry every this many lines.
    "LOG_ARCHIVE": env.str("CLEARWAY_LOG_ARCHIVE", default="on").lower(),
    "LOG_ARCHIVE_INDEX_LINES": env.int("CLEARWAY_LOG_ARCHIVE_INDEX_LINES", default=1000),
    "STEP_LIMITS_MAX": {
        "memory_mb": env.int("CLEARWAY_STEP_MEMORY_MB_MAX", default=16384),
        "processes": env.int("CLEARWAY_STEP_PROCESSES_MAX", default=4096),
        "cpu_seconds": env.int("CLEARWAY_STEP_CPU_SECONDS_MAX", default=86400),
    },
}

# LOG_FORMAT=json: one JSON object per line (python-json-logger) for log pipelines. Either
# way every record carries request_id (web) or task_id (worker), and run_id where there is
# one (orchestrator.logcontext).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "orchestrator.logcontext.ContextFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(context)s]: %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "static_fields": {"service": "clearway"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

CELERY_BEAT_SCHEDULE = {
    "reap-stale-steps": {
        "task": "clearway.reap_stale_steps",
        "schedule": CLEARWAY["REAPER_INTERVAL"],
    },
    "gate-housekeeping": {
        "task": "clearway.gate_housekeeping",
        "schedule": 30.0,
    },
    "audit-checkpoint": {
        "task": "clearway.audit_checkpoint",
        "schedule": CLEARWAY["AUDIT_CHECKPOINT_INTERVAL"],
    },
    "audit-stream": {
        "task": "clearway.stream_audit",
        "schedule": CLEARWAY["AUDIT_STREAM_INTERVAL"],
    },
    "metric-rollups": {
        "task": "clearway.metric_rollups",
        "schedule": CLEARWAY["METRIC_ROLLUP_INTERVAL"],
        # a pass older than the next one is pointless: drop it rather than queue passes
        "options": {"expires": CLEARWAY["METRIC_ROLLUP_INTERVAL"]},
    },
    # Expired artifacts and archived logs are deleted (recorded in the audit log), and the
    # logs of runs that ended without being archived (a lost message) are archived.
    "artifact-housekeeping": {
        "task": "clearway.artifact_housekeeping",
        "schedule": 3600.0,
    },
}
