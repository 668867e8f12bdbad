"""Settings of Rollyard's control plane, read from the environment.

Unset, everything falls back to the embedded development stack: SQLite under var/ and the
embedded Redis that devstack starts. Production and CI set DATABASE_URL, REDIS_URL,
DJANGO_SECRET_KEY, DJANGO_DEBUG=0 and DJANGO_ALLOWED_HOSTS.
"""

import os
from importlib.util import find_spec
from pathlib import Path

import dj_database_url

from rollyard.defaults import EMBEDDED_REDIS_URL, REPO_ROOT, VAR_DIR
from rollyard.task_names import ADMIT_RUNS, APPLY_CHECKPOINT_RETENTION, RECONCILE_RUNS


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


FRONTEND_DIR = REPO_ROOT / "frontend"
VAR_DIR.mkdir(exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production")
DEBUG = _env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's with an ASGI one (websockets work).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files for /api/docs/, served by us (no CDN)
    "accounts",
    "runs",
    "catalog",
    "quotas",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Straight after security: Daphne serves static files through it, no collectstatic.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "rollyard.middleware.RefuseNulCharacters",  # a NUL in a query or form field would 500 at PostgreSQL
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.LoginRateLimitMiddleware",  # after CSRF and auth: counts only real sign-in attempts
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "rollyard.urls"
ASGI_APPLICATION = "rollyard.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [FRONTEND_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'rollyard.sqlite3'}",
        # Persistent connections misbehave under ASGI (each request may be a new thread).
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # The web server, a worker and the tests write concurrently: WAL lets readers and
        # one writer overlap; IMMEDIATE takes the write lock at BEGIN, so two writers wait
        # for each other (up to `timeout`) instead of failing with "database is locked"
        # half way through a transaction.
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
    }
    # A file, not Django's default in-memory test database, so that the web server and
    # worker processes started by the end-to-end tests can share it.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("ROLLYARD_TEST_SQLITE", str(VAR_DIR / "test-rollyard.sqlite3"))
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker, results, channel layer ------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", EMBEDDED_REDIS_URL)

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Ray's workers need the real stdout/stderr file descriptors, not Celery's proxies.
CELERY_WORKER_REDIRECT_STDOUTS = False
# A run's message is acknowledged when its driver finishes, so a worker that dies before
# it claims the run leaves the message for another one. Tasks are safe to run twice (the
# queued → running transition refuses a second claim). A dead driver is not retried
# blindly: the heartbeat reconciler decides what happens to its run.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
# A driver holds its worker for the whole run; prefetching would strand messages behind it.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# With late acks, Redis redelivers a message unacknowledged for this long. Runs last
# hours; the default hour would start a second driver of a still-running run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7 * 24 * 3600}
CELERY_RESULT_EXPIRES = 7 * 24 * 3600

# The cache holds the rate limits' counters (accounts.ratelimit), shared by every web process.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("ROLLYARD_CHANNEL_PREFIX", "rollyard"),
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py ≥ 8 times socket reads out after 5 s by default, exactly channels-redis's
            # blocking-pop timeout: idle sockets then die with TimeoutError. Read timeout
            # well above the pop's 5 s.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
            # Separate stacks sharing one Redis (tests of two checkouts) keep their groups apart.
            "prefix": os.environ.get("ROLLYARD_CHANNEL_PREFIX", "rollyard"),
            # A busy run pushes many batches; a slow browser tab should lag, not drop.
            "capacity": 1000,
        },
    }
}

# --- auth ----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "runs:list"
LOGOUT_REDIRECT_URL = "login"
# Failures allowed per window, (count, seconds), before 429 + Retry-After (accounts.ratelimit):
# sign-ins per address and username, sign-ins per address, API token uses per address.
ROLLYARD_RATE_LIMITS = {"login": (5, 300), "login_address": (30, 300), "token": (20, 60)}
# A websocket without credentials in its handshake must send {"type": "auth", ...} this soon.
ROLLYARD_WS_AUTH_TIMEOUT_S = float(os.environ.get("ROLLYARD_WS_AUTH_TIMEOUT_S", 10))

# --- REST API --------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Tokens first: their WWW-Authenticate header turns a missing or bad credential into
    # 401 (with session authentication first, DRF answers 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # One scheme for every list: ?limit=&offset=, answering {count, next, previous, results}.
    "DEFAULT_PAGINATION_CLASS": "rollyard.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "rollyard.errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Rollyard API",
    "DESCRIPTION": "Launch, watch and manage RL training runs of reasoning LLMs.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema documents the API and holds no data: clients and the fuzz tests read it
    # before they have a token.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # The docs page (/api/docs/) loads Swagger UI from our static files, never a CDN:
    # machines may be offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No online validator badge: Swagger UI would send the schema to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Choice sets that share a field name ("status") each get a name of their own; a run's
    # keeps the one it had before samples came. Presets and alerts both have a "kind".
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "runs.models.RunStatus.choices",
        "SampleStatusEnum": "runs.models.SampleStatus.choices",
        "AlertKindEnum": "runs.models.AlertKind.choices",
        "PresetKindEnum": "catalog.models.PresetKind.choices",
    },
}

# --- datasets (catalog) -------------------------------------------------------------------
# Uploads stream into <data dir>/tmp and, once the engine's loader accepts them, move to
# <data dir>/datasets/<uuid>/ (same file system, so the move is a rename).
ROLLYARD_DATA_DIR = Path(os.environ.get("ROLLYARD_DATA_DIR", VAR_DIR / "data"))
ROLLYARD_MAX_UPLOAD_BYTES = int(os.environ.get("ROLLYARD_MAX_UPLOAD_BYTES", 200 * 1024 * 1024))
# Server folders whose files may be registered as datasets in place (comma-separated);
# none by default, so nobody can point the platform at arbitrary server files.
ROLLYARD_DATASET_ROOTS = [Path(root) for root in _env_list("ROLLYARD_DATASET_ROOTS", "")]
# Server folders holding model folders a run spec may name by absolute path
# (comma-separated); none by default: runs use built-in models (builtin:<name>).
ROLLYARD_MODEL_ROOTS = [Path(root) for root in _env_list("ROLLYARD_MODEL_ROOTS", "")]
# GPUs a run may ask for when its training backend uses one device (torch): more would be
# reserved in Ray and counted against quotas, idle, so the launch is refused. A backend
# that trains on several (engine.training.MULTI_DEVICE_BACKENDS: deepspeed, one rank per
# GPU) takes any number the pool holds. Not an operator setting; tests of multi-GPU quota
# arithmetic with the torch backend raise it.
ROLLYARD_MAX_GPUS_PER_RUN = 1

# --- static files ------------------------------------------------------------------------
STATIC_URL = "/static/"
# Where collectstatic would put files; WhiteNoise warns when it does not exist.
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [
    FRONTEND_DIR / "static",
    # plotly.js straight from the installed plotly package: no vendored copy, no CDN
    # (machines may be offline). Served at /static/vendor/plotly/plotly.min.js.
    # find_spec locates the package without importing it (importing plotly costs 30 ms).
    ("vendor/plotly", Path(find_spec("plotly").origin).resolve().parent / "package_data"),
]
# WhiteNoise finds files through the static finders, so Daphne serves them without a
# collectstatic step (production may still collect into STATIC_ROOT).
WHITENOISE_USE_FINDERS = True

# --- i18n, time ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}

# --- run lifecycle: run folders, reconciler, checkpoint retention, alerts (runs/, workers/) ---
# Each run's folder (checkpoints) is ROLLYARD_RUNS_DIR/<run id>; retention deletes only inside it.
ROLLYARD_RUNS_DIR = Path(os.environ.get("ROLLYARD_RUNS_DIR", VAR_DIR / "runs"))
# A running run whose last heartbeat is older than this lost its worker: requeue or fail it.
ROLLYARD_HEARTBEAT_TIMEOUT_S = float(os.environ.get("ROLLYARD_HEARTBEAT_TIMEOUT_S", 600))
# How often a run's driver beats while its steps run (workers.attempt): well under the timeout.
ROLLYARD_HEARTBEAT_EVERY_S = float(os.environ.get("ROLLYARD_HEARTBEAT_EVERY_S", 10))
# Attempts a run gets in all (the first included) before a lost worker fails it.
ROLLYARD_MAX_ATTEMPTS = int(os.environ.get("ROLLYARD_MAX_ATTEMPTS", 3))
# A queued or admitted run whose message no worker took within this is enqueued again.
ROLLYARD_ENQUEUE_TIMEOUT_S = float(os.environ.get("ROLLYARD_ENQUEUE_TIMEOUT_S", 300))
ROLLYARD_RECONCILE_EVERY_S = float(os.environ.get("ROLLYARD_RECONCILE_EVERY_S", 60))
ROLLYARD_RETENTION_EVERY_S = float(os.environ.get("ROLLYARD_RETENTION_EVERY_S", 300))
ROLLYARD_ADMIT_EVERY_S = float(os.environ.get("ROLLYARD_ADMIT_EVERY_S", 30))
# Defaults of a run's checkpoint retention; a launch may override each key.
ROLLYARD_RETENTION = {"keep_last": 3, "keep_best": 1, "metric": "val/acc/mean@1", "mode": "max"}
# Sample records (runs.prompts) are kept for a run's newest this many steps: a step keeps
# at most prompts_per_step × telemetry.samples_per_prompt responses (16 × 4 at the defaults).
ROLLYARD_SAMPLE_STEPS_KEPT = int(os.environ.get("ROLLYARD_SAMPLE_STEPS_KEPT", 1000))
# Alerts: POSTed as JSON to this URL (unset: recorded, not sent).
ROLLYARD_ALERT_WEBHOOK_URL = os.environ.get("ROLLYARD_ALERT_WEBHOOK_URL", "")
# An alert not delivered within this long of opening is no longer sent (runs.alerts):
# an endpoint set up or mended later gets no backlog of stale notices.
ROLLYARD_ALERT_DELIVERY_WINDOW_S = float(os.environ.get("ROLLYARD_ALERT_DELIVERY_WINDOW_S", 24 * 3600))
# ... and mailed (runs.alerts) through this SMTP server, Django's own settings; no
# EMAIL_HOST: no mail (Django's default, localhost, would mail a server nobody set up).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", 25))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _env_bool("EMAIL_USE_TLS", False)  # STARTTLS (port 587)
EMAIL_USE_SSL = _env_bool("EMAIL_USE_SSL", False)  # implicit TLS (port 465)
EMAIL_TIMEOUT = float(os.environ.get("EMAIL_TIMEOUT", 10))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "rollyard@localhost")
# The address users open the platform at (https://rollyard.example.com), for the links in
# alert mails and webhook bodies; unset: those links are paths.
ROLLYARD_PUBLIC_URL = os.environ.get("ROLLYARD_PUBLIC_URL", "").rstrip("/")
ROLLYARD_STUCK_AFTER_S = float(os.environ.get("ROLLYARD_STUCK_AFTER_S", 900))
# Idle: the mean of the last IDLE_WINDOW_STEPS values of IDLE_METRIC above the threshold.
ROLLYARD_IDLE_METRIC = "trainer/idle_ratio"
ROLLYARD_IDLE_THRESHOLD = float(os.environ.get("ROLLYARD_IDLE_THRESHOLD", 0.9))
ROLLYARD_IDLE_WINDOW_STEPS = 10
CELERY_BEAT_SCHEDULE = {
    "reconcile-runs": {"task": RECONCILE_RUNS, "schedule": ROLLYARD_RECONCILE_EVERY_S},
    "apply-checkpoint-retention": {"task": APPLY_CHECKPOINT_RETENTION, "schedule": ROLLYARD_RETENTION_EVERY_S},
    # Launches, finishes and quota edits each request a sweep; this one catches what they
    # missed (a broker down at commit, Ray's GPUs freed by work outside Rollyard) and tells
    # the queue and quota pages when time alone changed why runs wait (quotas.live).
    "admit-runs": {"task": ADMIT_RUNS, "schedule": ROLLYARD_ADMIT_EVERY_S},
}
