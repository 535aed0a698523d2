"""The connection indicator (#live-indicator) tells the truth about the websocket."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

# Counts the websocket (re)connections of a page: live.js fires clearway:open on each.
COUNT_OPENS = (
    "window.__clearwayOpens = 0;"
    "document.addEventListener('clearway:open', () => { window.__clearwayOpens += 1; });"
)
PAGES = ["/", "/pipelines/", "/pipelines/payments-api/", "/approvals/", "/policies/", "/board/"]


def test_indicator_is_live_on_every_page_and_down_without_server(world, login, processes):
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    # Once through the real login form (the server's hashers: not the tests' MD5).
    hasher = PBKDF2PasswordHasher()
    world.dana.password = hasher.encode("correct horse", hasher.salt(), iterations=1000)
    world.dana.save(update_fields=["password"])
    page = login(None)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    expect(page.locator("#live-indicator")).to_have_count(0)  # anonymous: no live updates
    page.locator("#id_username").fill("dana")
    page.locator("#id_password").fill("correct horse")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("link", name="dana")).to_be_visible()

    for url in PAGES:
        page.goto(url)
        expect_live(page)
        expect(page.locator("#live-indicator")).not_to_have_class(re.compile(r"\bdown\b"))

    processes["browser-asgi"].stop()
    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_class(re.compile(r"(^|\s)down(\s|$)"))
    expect(indicator).to_have_text("reconnecting…")
    expect(indicator).not_to_have_class(re.compile(r"(^|\s)ok(\s|$)"))


# redis-py 8 gives every connection a 5 s socket timeout (redis/_defaults.py,
# DEFAULT_SOCKET_TIMEOUT = 5) and channels_redis blocks in BZPOPMIN for 5 s (brpop_timeout)
# while a consumer waits for its next message. Without the longer socket timeout of
# CHANNEL_LAYERS (orchestrator/settings.py) the read mostly timed out first, the consumer
# died (redis.exceptions.TimeoutError in the ASGI log) and the browser reconnected every
# ~5.5 s. 12 s covers two of those waits.
IDLE_MS = 12_000


def test_connection_stays_up_while_nothing_happens(world, login):
    page = login(world.dana)
    page.add_init_script(COUNT_OPENS)
    page.goto("/")
    expect_live(page)
    assert page.evaluate("window.__clearwayOpens") == 1
    # Nothing happens for 12 s: the page must not have to reconnect in that time.
    with pytest.raises(PlaywrightTimeout):
        page.wait_for_function("() => window.__clearwayOpens > 1", timeout=IDLE_MS)
    expect_live(page)
