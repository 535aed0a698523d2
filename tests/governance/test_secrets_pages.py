"""The Secrets section of the environment page and the secrets a step received on the run
page: names and versions for everyone who may see them, forms for secret managers, and
never a value."""

from __future__ import annotations

import pytest
from django.test import Client
from guardian.shortcuts import assign_perm

from governance import secrets
from governance.models import AuditEvent, Secret
from orchestrator.models import StepRun

pytestmark = pytest.mark.django_db

VALUE = "page-secret-8c1d"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def keeper(make_user, production):
    user = make_user("kim", "developer")
    assign_perm("governance.manage_secrets", user, production)
    return user


def test_a_manager_sets_a_secret_on_the_page_and_it_is_never_shown_again(keeper, production):
    client = client_for(keeper)
    page = client.get("/environments/production/").content.decode()
    assert 'id="secrets"' in page and "Set secret" in page
    response = client.post(
        "/environments/production/secrets/", {"name": "DB_PASSWORD", "value": VALUE}
    )
    assert response.status_code == 302
    assert Secret.objects.get(name="DB_PASSWORD").version == 1
    page = client.get("/environments/production/").content.decode()
    assert 'data-secret="DB_PASSWORD"' in page and "v1" in page and VALUE not in page


def test_a_bad_name_is_refused_on_the_page_with_the_rule(keeper, production):
    client = client_for(keeper)
    response = client.post(
        "/environments/production/secrets/", {"name": "db-password", "value": VALUE}, follow=True
    )
    assert "^[A-Z_][A-Z0-9_]*$" in response.content.decode()
    assert not Secret.objects.exists()
    assert AuditEvent.objects.filter(action="secret.set", details__rule="name").exists()


def test_a_viewer_sees_names_but_no_form_and_cannot_set(viewer, keeper, production):
    secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production)
    client = client_for(viewer)
    page = client.get("/environments/production/").content.decode()
    assert 'data-secret="DB_PASSWORD"' in page and "Set secret" not in page
    response = client.post(
        "/environments/production/secrets/", {"name": "DB_PASSWORD", "value": "x"}
    )
    assert response.status_code == 403
    assert Secret.objects.get().version == 1


def test_the_run_page_shows_which_secrets_a_step_received(run_at_gate, developer):
    run, _ = run_at_gate()
    step = StepRun.objects.get(stage__run=run, name="compile")
    step.secrets = [{"name": "DB_PASSWORD", "version": 4, "scope": "environment production"}]
    step.save(update_fields=["secrets"])
    page = client_for(developer).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-role="secrets"' in page
    assert '<span class="mono">DB_PASSWORD</span> v4' in page


def test_the_admin_sets_a_value_through_the_verb_and_never_shows_it(superuser, production):
    client = client_for(superuser)
    response = client.post(
        "/admin/governance/secret/add/",
        {
            "name": "ADMIN_TOKEN",
            "environment": production.pk,
            "team": "",
            "value": VALUE,
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    secret = Secret.objects.get(name="ADMIN_TOKEN")
    assert secret.version == 1
    assert AuditEvent.objects.filter(action="secret.create", details__name="ADMIN_TOKEN").exists()
    page = client.get(f"/admin/governance/secret/{secret.pk}/change/").content.decode()
    assert VALUE not in page
