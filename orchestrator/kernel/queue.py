"""Queue Celery work by task name. Domain code never imports a tasks module (tasks sit above
the verbs they wrap); it names the task, and this looks it up in the app's registry — the
task's own options (retries, acks_late) and the app's configuration (eager mode in the fast
tests) apply as if the caller had imported it."""

from __future__ import annotations

from celery import current_app


def enqueue(name: str, args: tuple = (), **options):
    """`apply_async` of the task registered as `name`. A process that has not imported the
    tasks modules yet (a web server) runs Celery's autodiscovery once, here."""
    registry = current_app.tasks
    if name not in registry:
        current_app.loader.import_default_modules()  # autodiscovery: every app's tasks.py
    task = registry.get(name)
    if task is None:  # not known in this process: let the broker route it by name
        return current_app.send_task(name, args=args, **options)
    return task.apply_async(args, **options)
