"""Browser tests: Chromium (through Playwright) against the real stack.

A uvicorn ASGI server, a Celery worker and beat, Redis and PostgreSQL, the same as the
integration tests (tests/integration/conftest.py provides the services and the process
helpers). Each test sets its data up through the ORM and the product's own actions, logs its
people in with a session cookie (`login(user)` → a Playwright page of its own browser context)
and saves screenshots under test-artifacts/screenshots/ (see docs/browser-tests.md).

The server, worker and beat are started for each test (`stack`, see there why) with the
integration helpers, and stopped at its end, so nothing of this package outlives it.

Playwright's sync API keeps its event loop registered as the running loop of the main
thread, so Django's async-safety check would refuse every ORM call the test makes between
two browser calls (and the database flush after each test). The test process does not share
that loop with anything, so the check is switched off for this package only (restored when
it ends), and explicitly kept on in the server and worker processes it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures and the marker hook)
    ROOT,
    live_db,
    log_dir,
    pytest_collection_modifyitems,
    require,
    services,
    start_beat,
    start_server,
    start_worker,
)

CHROMIUM = os.environ.get("CLEARWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
# Keeps Django's async-safety check on in the subprocesses whatever the test process does.
STRICT = {"DJANGO_ALLOW_ASYNC_UNSAFE": ""}
# Default wait for Playwright's auto-waiting assertions and actions (ms).
TIMEOUT_MS = 20_000


@pytest.fixture(scope="package", autouse=True)
def _orm_beside_playwright() -> Iterator[None]:
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if before is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


# --- processes -----------------------------------------------------------------------------


PROCESSES = pytest.StashKey[list]()


@pytest.fixture
def stack(live_db, log_dir, tmp_path, request) -> Iterator[str]:  # noqa: F811
    """A fresh ASGI server, Celery worker and beat for each test, started side by side
    (~5 s); returns the server's base URL. They are stopped before the database is flushed.

    Why not once per session: the flush after every transactional test recreates the
    content types (new ids), and a process that lived through it keeps the old ids in
    Django's ContentType cache, so django-guardian finds no object permission any more (no
    pipeline visible in the server; no eligible approver in the worker, which then blocks
    gates as "not curable")."""
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(start_server, live_db, log_dir, name="browser-asgi", extra_env=STRICT),
            pool.submit(start_worker, live_db, log_dir, name="browser-worker", extra_env=STRICT),
            pool.submit(start_beat, live_db, log_dir, tmp_path, STRICT),
        ]
    processes = [f.result() for f in futures if f.exception() is None]
    processes = [p[0] if isinstance(p, tuple) else p for p in processes]
    request.node.stash[PROCESSES] = processes
    try:
        url = futures[0].result()[1]
        for future in futures[1:]:
            future.result()  # a process that did not start fails the test here
        yield url
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda proc: proc.stop(), processes))


@pytest.fixture
def processes(stack, request) -> dict:
    """The test's processes by name: browser-asgi, browser-worker, beat."""
    return {proc.name: proc for proc in request.node.stash[PROCESSES]}


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="package")
def chromium():
    require(Path(CHROMIUM).exists(), f"Chromium ({CHROMIUM})")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # a broken install is a failure in CI, a skip elsewhere
        pw.stop()
        require(False, f"a working Chromium ({CHROMIUM}: {exc})")
    yield browser
    browser.close()
    pw.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def session_cookie(user) -> dict:
    """A Django session for `user` (created in the database the server reads) as a
    Playwright cookie."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {
        "name": settings.SESSION_COOKIE_NAME,
        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "domain": "127.0.0.1",
        "path": "/",
        "httpOnly": True,
        "sameSite": "Lax",
    }


@pytest.fixture
def login(chromium, stack, request) -> Iterator[Callable]:
    """login(user) → a Page of a fresh browser context logged in as `user`, on the live
    server (base URL set: page.goto("/approvals/")); login(None): not logged in.
    JavaScript errors fail the test. On a failure every open page is saved as
    test-artifacts/screenshots/FAILED-<test>-<user>-<n>.png and the server, worker and beat
    logs are copied to test-artifacts/logs/."""
    contexts: list[tuple[str, object]] = []
    errors: list[str] = []

    def make(user):
        context = chromium.new_context(
            base_url=stack, viewport={"width": 1360, "height": 900}, locale="en-GB"
        )
        context.set_default_timeout(TIMEOUT_MS)
        if user is not None:
            context.add_cookies([session_cookie(user)])
        page = context.new_page()
        name = user.get_username() if user is not None else "anonymous"
        page.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
        contexts.append((name, context))
        return page

    yield make

    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        test = re.sub(r"[^\w.-]+", "_", request.node.name)
        for name, context in contexts:
            for n, page in enumerate(context.pages):
                try:
                    page.screenshot(
                        path=SCREENSHOTS / f"FAILED-{test}-{name}-{n}.png", full_page=True
                    )
                except Exception:  # noqa: S110  (best effort: the page may be gone)
                    pass
        _copy_process_logs(request, test)
    for _, context in contexts:
        context.close()
    assert not errors, "JavaScript errors on the pages:\n" + "\n".join(errors)


def _copy_process_logs(request, test: str) -> None:
    logs = ARTIFACTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for proc in request.node.stash.get(PROCESSES, []):
        (logs / f"{test}-{proc.name}.log").write_text(proc.output()[-200_000:])


@pytest.fixture
def shot() -> Callable:
    """shot(page, "03-run-running"): a full-page screenshot in test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.evaluate("window.scrollTo(0, 0)")  # the sticky navigation stays on top
        page.screenshot(path=path, full_page=True)
        return path

    return take


# --- data ----------------------------------------------------------------------------------

# dashboard/demo/payments-api.yaml with short steps. build/compile prints a line every 0.4 s
# (~3 s) so its log visibly grows while it runs.
LIVE_PIPELINE = """\
name: Payments API
description: Build, test and ship the payments API (browser-test edition, short steps).
parameters:
  - name: version
    description: Release version, e.g. 2.14.0
    required: true
  - name: commit
    description: Git commit being released
    default: "0000000"
  - name: branch
    description: Source branch
    default: main
  - name: author
    description: Author of the change (may not approve it)
    default: ""
stages:
  - name: build
    steps:
      - name: compile
        run: |
          echo "Building payments-api $CLEARWAY_PARAM_VERSION from $CLEARWAY_PARAM_BRANCH"
          for module in core ledger settlement gateway refunds reporting; do
            sleep 0.4; printf 'compiling %s ...\\n' "$module"
          done
          sleep 0.4; echo "image: registry.example/payments-api:$CLEARWAY_PARAM_VERSION"
  - name: unit-tests
    needs: [build]
    steps:
      - name: pytest
        run: |
          echo "collected 412 items"
          echo "412 passed in 0.1s"
  - name: lint
    needs: [build]
    steps:
      - name: ruff
        run: echo "All checks passed!"
  - name: deploy-staging
    needs: [unit-tests, lint]
    environment: staging
    steps:
      - name: rollout
        run: echo "Deploying payments-api $CLEARWAY_PARAM_VERSION to $CLEARWAY_ENVIRONMENT"
  - name: deploy-production
    needs: [deploy-staging]
    environment: production
    steps:
      - name: rollout
        run: |
          echo "Canary 10% of payments-api $CLEARWAY_PARAM_VERSION"; sleep 0.2
          echo "Deployment complete"
"""
# build/compile's log: the executor's "$ <script>" line, then the script's output.
BUILD_LOG = [
    "$ <script>",
    "Building payments-api {version} from main",
    *(
        f"compiling {module} ..."
        for module in ("core", "ledger", "settlement", "gateway", "refunds", "reporting")
    ),
    "image: registry.example/payments-api:{version}",
]
BUILD_LOG_LINES = len(BUILD_LOG)


@pytest.fixture
def world(
    developer,
    approver,
    second_approver,
    security_approver,
    policy_admin,
    environments,
    make_pipeline,
):
    """The demo's people, staging + production (protected: 2 from sre AND 1 from security, no
    change windows so the gate does not depend on the clock), the demo policies published and
    the payments-api pipeline of team payments (LIVE_PIPELINE). Everything is committed: the
    server and the worker see it."""
    from types import SimpleNamespace

    from django.utils import timezone

    from dashboard.demo.policies import seed_policies
    from governance.models import Policy

    production = environments["production"]
    production.change_windows = []
    production.freeze_windows = []
    production.save(update_fields=["change_windows", "freeze_windows"])
    assert seed_policies(policy_admin, now=timezone.now()) == 10
    assert Policy.objects.filter(name="prod-approvals", current_version__isnull=False).exists()
    return SimpleNamespace(
        dana=developer,
        sam=approver,
        sara=second_approver,
        sofia=security_approver,
        paula=policy_admin,
        staging=environments["staging"],
        production=production,
        pipeline=make_pipeline(definition=LIVE_PIPELINE),
    )


# --- page helpers --------------------------------------------------------------------------


def expect_live(page) -> None:
    """The connection indicator says the websocket is up (class "ok", text "live")."""
    from playwright.sync_api import expect

    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_class(re.compile(r"(^|\s)ok(\s|$)"))
    expect(indicator).to_have_text("live")


def mark_document(page) -> None:
    """Tag the current document; `same_document(page)` is False once the page reloaded or
    navigated away (everything asserted in between arrived live)."""
    page.evaluate("window.__clearwayTestMark = true")


def same_document(page) -> bool:
    return page.evaluate("window.__clearwayTestMark === true")
