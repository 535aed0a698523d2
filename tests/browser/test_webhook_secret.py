"""Issue 18, point 8: dana creates a pipeline in the browser and reads its webhook secret
once; a reload no longer shows it; she rotates it (audited, the old one stops working) and
reads the new one once; an administrator lists pipelines and runs in the Django admin,
without the secret."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DEFINITION = """name: Claims
stages:
  - name: build
    steps:
      - name: compile
        run: echo "building"
"""


def _hook(base_url: str, slug: str, secret: str) -> int:
    from orchestrator.actions import sign

    body = b'{"parameters": {}}'
    response = httpx.post(
        f"{base_url}/hooks/{slug}/",
        content=body,
        headers={"X-Clearway-Signature": sign(secret, body), "Content-Type": "application/json"},
        timeout=30,
    )
    return response.status_code


def test_the_secret_is_shown_once_and_can_be_rotated(world, login, shot, stack, superuser):
    from governance.models import AuditEvent
    from orchestrator.models import Pipeline

    dana = login(world.dana)
    dana.goto("/pipelines/new/")
    dana.locator("input[name=slug]").fill("claims")
    dana.locator("textarea[name=definition]").fill(DEFINITION)
    dana.get_by_role("button", name="Create pipeline").click()
    dana.wait_for_url("**/pipelines/claims/")
    secret = Pipeline.objects.get(slug="claims").webhook_secret
    expect(dana.locator("#webhook-secret")).to_have_text(secret)
    shot(dana, "15-webhook-secret-once")
    dana.reload()
    expect(dana.locator("#webhook-secret")).to_have_count(0)
    assert secret not in dana.content()
    dana.goto("/pipelines/")
    assert secret not in dana.content()
    assert _hook(stack, "claims", secret) == 201

    dana.goto("/pipelines/claims/")
    dana.locator("#webhook-link").click()
    expect(dana.locator("#webhook-secret")).to_have_count(0)
    dana.locator("#rotate-secret").click()
    new = Pipeline.objects.get(slug="claims").webhook_secret
    assert new != secret
    expect(dana.locator("#webhook-secret")).to_have_text(new)
    dana.reload()
    expect(dana.locator("#webhook-secret")).to_have_count(0)
    assert _hook(stack, "claims", secret) == 403
    assert _hook(stack, "claims", new) == 201
    event = AuditEvent.objects.get(action="pipeline.webhook_rotate")
    assert event.actor_name == "dana" and new not in str(event.details)

    ada = login(superuser)
    ada.goto("/admin/orchestrator/pipeline/")
    expect(ada.locator("#result_list")).to_contain_text("claims")
    assert new not in ada.content()
    ada.goto("/admin/orchestrator/run/")
    expect(ada.locator("#result_list")).to_contain_text("claims #")
