"""Scale-out, in a browser: two ASGI servers and two workers against one PostgreSQL and one
Redis (and once with RabbitMQ as the broker). Chromium on server A — the overview, open
before the run exists, and the run page — follows, without a reload, a run triggered
through server B's API to its final status and the right stage statuses; every step ran
once (the assertions of tests/integration/test_scale_out.py, whose websocket client watches
the same thing at the protocol level)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    PROCESSES,
    STRICT,
    expect_live,
    mark_document,
    same_document,
    session_cookie,
)
from tests.integration.conftest import _port_open, require, start_server, start_worker
from tests.integration.test_scale_out import DEFINITION as SCALE_OUT_DEFINITION
from tests.integration.test_scale_out import _setup_user, assert_each_step_ran_once

pytestmark = pytest.mark.browser

# tests/integration/test_scale_out.py's pipeline, with a first step of ~3 s so the run is
# still in progress when the run page opens.
DEFINITION = SCALE_OUT_DEFINITION.replace('run: "echo a1; sleep 0.3"', 'run: "echo a1; sleep 3"')
assert DEFINITION != SCALE_OUT_DEFINITION
STAGES = ("a", "b", "c", "d")
TERMINAL = ("succeeded", "failed", "canceled", "blocked")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_env(request) -> dict[str, str]:
    if request.param == "redis":
        return {}
    require(_port_open("127.0.0.1", 5672), "RabbitMQ")
    return {
        "CELERY_BROKER_URL": os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    }


@pytest.fixture
def scale_out(live_db, log_dir, request, broker_env) -> Iterator[dict[str, str]]:
    """Servers A and B and workers w1 and w2, started side by side; {"a": url, "b": url}.
    Steps go to a queue named after the test database, so that two runs on one machine
    (one RabbitMQ) do not take each other's tasks."""
    from django.conf import settings

    queue = f"steps-{settings.DATABASES['default']['NAME']}"
    env = {**STRICT, **broker_env, "CLEARWAY_STEP_QUEUE": queue}
    with ThreadPoolExecutor(4) as pool:
        futures = [
            *(
                pool.submit(start_server, live_db, log_dir, name=f"asgi{x}", extra_env=env)
                for x in ("A", "B")
            ),
            *(
                pool.submit(
                    start_worker, live_db, log_dir, name=f"w{i}", extra_env=env, queues=queue
                )
                for i in (1, 2)
            ),
        ]
    processes = [f.result() for f in futures if f.exception() is None]
    processes = [p[0] if isinstance(p, tuple) else p for p in processes]
    request.node.stash[PROCESSES] = processes
    try:
        urls = [future.result()[1] for future in futures[:2]]
        for future in futures[2:]:
            future.result()  # a process that did not start fails the test here
        yield {"a": urls[0], "b": urls[1]}
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda proc: proc.stop(), processes))


@pytest.fixture
def stack(scale_out) -> str:
    """Overrides the package's `stack`: `login` opens its pages on server A."""
    return scale_out["a"]


@contextmanager
def api_b(url_b: str, user) -> Iterator[httpx.Client]:
    """An HTTP client on server B, logged in as `user`, with a CSRF token."""
    cookies = {"sessionid": session_cookie(user)["value"]}
    with httpx.Client(base_url=url_b, cookies=cookies, timeout=20) as http:
        csrf = http.get("/accounts/login/").cookies["csrftoken"]
        http.cookies.set("csrftoken", csrf)
        http.headers.update({"X-CSRFToken": csrf, "Referer": url_b + "/"})
        yield http


def test_a_page_on_server_a_follows_a_run_triggered_through_server_b(scale_out, login, shot):
    from orchestrator.models import StageRun

    user, team = _setup_user()
    slug = f"scale-{uuid.uuid4().hex[:6]}"
    with api_b(scale_out["b"], user) as http:
        created = http.post(
            "/api/v1/pipelines/", json={"slug": slug, "team": team.slug, "definition": DEFINITION}
        )
        assert created.status_code == 201, created.text

        # The overview on server A, open before the run exists.
        overview = login(user)
        overview.goto("/")
        expect_live(overview)
        pipeline_row = overview.locator(f'#overview-live tr[data-pipeline="{slug}"]')
        expect(pipeline_row).to_contain_text("never run")
        mark_document(overview)

        triggered = http.post(f"/api/v1/pipelines/{slug}/runs/", json={"parameters": {}})
        assert triggered.status_code == 201, triggered.text
        run_id = triggered.json()["id"]

    # The overview on A shows the run in progress: it learnt of it live.
    running_row = overview.locator(f'#overview-live tr[data-run-id="{run_id}"]')
    expect(running_row).to_be_visible()

    # The run page on A, opened while the run is still in progress.
    page = login(user)
    page.goto(f"/runs/{run_id}/")
    expect_live(page)
    mark_document(page)
    assert page.locator("#run-status").get_attribute("data-status") not in TERMINAL
    for stage in STAGES:
        expect(page.locator(f'[data-stage-name="{stage}"]')).to_have_attribute(
            "data-status", "succeeded"
        )
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    shot(page, "12-scale-out-run-on-server-a")

    # The overview follows: the run leaves "In progress", the pipeline's last run succeeded.
    expect(running_row).to_have_count(0)
    expect(pipeline_row.locator("td").nth(2).locator(".status")).to_have_text("succeeded")
    assert same_document(overview), "the overview reloaded"
    assert same_document(page), "the run page reloaded"

    # What the page shows is what the database holds.
    shown = {
        name: page.locator(f'[data-stage-name="{name}"]').get_attribute("data-status")
        for name in STAGES
    }
    stored = dict(StageRun.objects.filter(run_id=run_id).values_list("name", "status"))
    assert shown == stored
    assert_each_step_ran_once(run_id)
