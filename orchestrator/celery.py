"""The Celery application: `celery -A orchestrator worker` / `celery -A orchestrator beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("orchestrator")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="clearway.ping", ignore_result=False)
def ping(value: str = "pong") -> str:
    """A trivial task: health checks and the standalone smoke test use it."""
    return value
