"""Browser-facing hardening: security headers on every response, a CSP that the rendered
pages actually keep (no inline script without the nonce, no inline style, no inline event
handler), CSRF enforced on every state-changing form and htmx POST, and names, parameters
and step output escaped wherever pages show them.

The pages come from the permission matrix (test_permission_matrix.ROUTES, itself checked
against the URL configuration), so a new page is covered here as soon as it has its entry
there.
"""

from __future__ import annotations

import json
import re
import textwrap
from html.parser import HTMLParser

import pytest
from django.test import Client

from .conftest import World
from .test_permission_matrix import (
    ROUTES,
    Check,
    build_url,
    excluded,
    fingerprint,
    is_api,
    url_patterns,
)

# HTML we do not write, where only the inline styles are tolerated: the CSP blocks them (the
# page looks plainer), which weakens nothing. Scripts, event handlers and javascript: URLs
# are still checked there.
THIRD_PARTY_HTML = {
    "/api/docs/": "Swagger UI (drf-spectacular's sidecar template)",
    "/api/v1/": "Django REST framework's browsable API (the API's HTML rendering)",
}

# POST routes that are not protected by the CSRF token, each with its reason.
CSRF_EXEMPT = {
    "webhook": "authenticated by the HMAC signature of the body (X-Clearway-Signature), "
    "never by a cookie: a forged cross-site request has no valid signature",
    "api-token": "credentials in the body; the token comes back in the response body, "
    "which a cross-site page cannot read (no CORS), and no cookie authenticates it",
}


def _requests(world: World, method: str, role: str = "superuser"):
    """(pattern, check, url) of every check of the matrix with this method that `role` is
    allowed to make, with success (2xx/3xx) as its expected status."""
    for pattern in url_patterns():
        if excluded(pattern) or pattern.key not in ROUTES:
            continue
        route = ROUTES[pattern.key]
        for check in route.checks:
            if check.method != method or role not in check.allowed:
                continue
            url = build_url(pattern, check, route, world)
            wanted = check.expected(role, is_api(url))
            if isinstance(wanted, int) and wanted >= 400:
                continue
            yield pattern, check, url


# --- headers and the content of pages ------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


class PageAudit(HTMLParser):
    """Collects what a strict CSP would block (or what would bypass it) in a page."""

    def __init__(self, nonce: str | None, *, styles: bool = True):
        super().__init__(convert_charrefs=True)
        self.nonce = nonce
        self.styles = styles  # check inline styles
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name == "style" and self.styles:
                self.problems.append(f'<{tag} style="{value}">: inline style attribute')
            elif name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>: inline event handler")
            elif name in ("href", "src", "action", "formaction") and (value or "").strip(
                " \t\n"
            ).lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}={value!r}>: javascript: URL")
        if tag == "style" and self.styles:
            self.problems.append("<style> element: inline styles are blocked (style-src 'self')")
        if tag == "script":
            kind = (attrs.get("type") or "text/javascript").lower()
            data_block = kind in ("application/json", "application/ld+json")
            if "src" not in attrs and not data_block and attrs.get("nonce") != self.nonce:
                self.problems.append(f"<script {attrs}>: inline script without the nonce")


def check_response(label: str, response, url: str = "") -> list[str]:
    problems = []
    csp = response.get("Content-Security-Policy")
    nonce = None
    if not csp:
        problems.append("no Content-Security-Policy")
    else:
        directives = csp_directives(csp)
        script_src = directives.get("script-src", directives.get("default-src"))
        if script_src is None:
            problems.append("CSP without script-src or default-src")
        else:
            if "'unsafe-inline'" in script_src:
                problems.append("script-src allows 'unsafe-inline'")
            nonces = [s for s in script_src if s.startswith("'nonce-")]
            nonce = nonces[0][7:-1] if nonces else None
        if any("'unsafe-eval'" in values for values in directives.values()):
            problems.append("CSP allows 'unsafe-eval'")
        loose = [s for s in directives.get("connect-src", []) if s.endswith(":") or "*" in s]
        if loose:
            problems.append(f"connect-src allows any host for {loose}")
        if directives.get("frame-ancestors") != ["'none'"]:
            problems.append(f"frame-ancestors {directives.get('frame-ancestors')}")
    if response.get("X-Frame-Options") != "DENY":
        problems.append(f"X-Frame-Options {response.get('X-Frame-Options')!r}")
    if response.get("X-Content-Type-Options") != "nosniff":
        problems.append(f"X-Content-Type-Options {response.get('X-Content-Type-Options')!r}")
    if not response.get("Referrer-Policy"):
        problems.append("no Referrer-Policy")
    if response.get("Content-Type", "").startswith("text/html"):
        body = b"".join(response.streaming_content) if response.streaming else response.content
        ours = not any(url.startswith(prefix) for prefix in THIRD_PARTY_HTML)
        audit = PageAudit(nonce, styles=ours)
        audit.feed(body.decode())
        problems += audit.problems
    return [f"{label}: {p}" for p in problems]


class TestPages:
    """Against the world of conftest (class-scoped: this module has a transactional test)."""

    @pytest.fixture
    def world(self, class_world, db):
        return class_world

    def test_every_page_and_api_response(self, world):
        """Every GET of the matrix as a superuser: pages (with their htmx partials), the
        browsable API (HTML) and the JSON API."""
        pages, api, problems = Client(), Client(), []
        pages.force_login(world.users["superuser"])
        api.defaults["HTTP_AUTHORIZATION"] = f"Token {world.tokens['superuser']}"
        seen = 0
        for _pattern, check, url in _requests(world, "get"):
            headers = {"HX-Request": "true"} if check.htmx else {}
            if is_api(url):
                response = api.get(url)
                problems += check_response(f"GET {url} (JSON)", response, url)
                headers["Accept"] = "text/html"
            response = pages.get(url, headers=headers)
            if is_api(url) and response.status_code == 406:
                continue  # no HTML rendering of this one (the OpenAPI schema)
            assert response.status_code < 400, (url, response.status_code)
            problems += check_response(f"GET {url}", response, url)
            seen += 1
        assert seen > 50
        assert not problems, "\n".join(problems)

    def test_error_and_public_pages(self, world):
        """The login page, 403 and 404 pages, a refused API call and the health check."""
        anonymous, viewer, outsider = Client(), Client(), Client()
        viewer.force_login(world.users["viewer"])
        outsider.force_login(world.users["outsider"])
        responses = {
            "login": anonymous.get("/accounts/login/"),
            "healthz": anonymous.get("/healthz"),
            "anonymous API": anonymous.get("/api/v1/runs/"),
            "403 page": viewer.get("/audit/"),
            "404 page": outsider.get(f"/runs/{world.run.pk}/"),
            "no such page": viewer.get("/no/such/page/"),
            "405": viewer.get("/accounts/logout/"),
        }
        assert responses["403 page"].status_code == 403
        assert responses["404 page"].status_code == 404
        problems = [p for label, r in responses.items() for p in check_response(label, r)]
        assert not problems, "\n".join(problems)

    def test_the_nonce_changes_with_every_response(self, world):
        client = Client()
        client.force_login(world.users["viewer"])
        nonces = {
            re.search(r"'nonce-([^']+)'", client.get("/")["Content-Security-Policy"]).group(1)
            for _ in range(3)
        }
        assert len(nonces) == 3


# --- CSRF ------------------------------------------------------------------------------


class TestCsrf:
    @pytest.fixture
    def world(self, class_world, db):
        return class_world

    @staticmethod
    def _send(client: Client, check: Check, url: str, world: World, headers: dict):
        data = check.data(world) if callable(check.data) else check.data
        send = getattr(client, check.method)
        if is_api(url):
            body = json.dumps(data or {})
            return send(url, body, content_type="application/json", headers=headers)
        return send(url, data or {}, headers=headers)

    def test_every_change_needs_the_token(self, world):
        """Every POST, PUT, PATCH and DELETE of the matrix (pages, htmx, and the API with a
        session cookie), as a superuser whose cookie a forged cross-site request would carry:
        403 without the CSRF token and nothing changed; with the token, no CSRF refusal."""
        problems, seen = [], 0
        for pattern in url_patterns():
            if excluded(pattern) or pattern.key not in ROUTES or pattern.key in CSRF_EXEMPT:
                continue
            route = ROUTES[pattern.key]
            for check in route.checks:
                if check.method == "get":
                    continue
                url = build_url(pattern, check, route, world)
                problems += self._check(check, url, world)
                seen += 1
        assert seen > 35
        assert not problems, "\n".join(problems)

    def _check(self, check: Check, url: str, world: World) -> list[str]:
        problems = []
        client = Client(enforce_csrf_checks=True)
        client.force_login(world.users["superuser"])
        label = f"{check.method.upper()} {url}"
        for htmx in (False, True):
            headers = {"HX-Request": "true"} if htmx or check.htmx else {}
            before = fingerprint()
            response = self._send(client, check, url, world, headers)
            if response.status_code != 403 or b"CSRF" not in response.content:
                problems.append(f"{label} (htmx {htmx}): {response.status_code} without a token")
            if fingerprint() != before:
                problems.append(f"{label} (htmx {htmx}): changed the database without a token")
        # The same request with the token (cookie + header, as htmx sends it) is not refused
        # for CSRF (it may be refused for other reasons, e.g. a superuser approving).
        client.get("/accounts/login/")  # sets the csrftoken cookie
        token = client.cookies["csrftoken"].value
        response = self._send(client, check, url, world, {"X-CSRFToken": token})
        if response.status_code == 403 and b"CSRF" in response.content:
            problems.append(f"{label}: refused even with the CSRF token")
        return problems

    def test_login_form_needs_the_token(self, world):
        client = Client(enforce_csrf_checks=True)
        response = client.post("/accounts/login/", {"username": "ada", "password": "x"})
        assert response.status_code == 403

    def test_exemptions_are_real_routes(self):
        keys = {p.key for p in url_patterns()}
        assert set(CSRF_EXEMPT) <= keys

    def test_pages_carry_the_token_for_htmx(self, world):
        """htmx sends the token from <body hx-headers>; every form has the hidden field."""
        client = Client()
        client.force_login(world.users["superuser"])
        body = client.get(f"/runs/{world.run.pk}/").content.decode()
        assert re.search(r'<body[^>]*hx-headers=\'\{"X-CSRFToken": "[^"]+"\}\'', body)
        forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", body, re.S | re.I)
        assert forms, "the run page of a run at its gate has forms"
        for form in forms:
            assert 'name="csrfmiddlewaretoken"' in form


# --- escaping --------------------------------------------------------------------------

EVIL_NAME = "<script>alert(1)</script>"
EVIL_OUTPUT = "<img src=x onerror=alert(2)>"
EVIL_PARAMETER = '"><svg onload=alert(3)>'
EVIL_PIPELINE = textwrap.dedent(
    f"""\
    name: "{EVIL_NAME}"
    description: "<b>bold</b> & <i>friends</i>"
    parameters:
      - name: version
        default: "1.0.0"
    stages:
      - name: build
        steps:
          - name: compile
            run: echo '{EVIL_OUTPUT}'
    """
)


@pytest.mark.django_db(transaction=True)
def test_names_parameters_and_output_are_escaped(tmp_path, settings):
    """A pipeline named like a script, a parameter that closes an attribute and a step that
    prints HTML (run by the real executor): every page shows them as text."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from orchestrator import actions, executors
    from orchestrator.models import LogChunk, Team

    settings.CLEARWAY = {**settings.CLEARWAY, "WORKSPACE_ROOT": str(tmp_path)}
    group = Group.objects.create(name="team-evil")
    team = Team.objects.create(slug="evil", name="<i>Evil</i> team", group=group)
    ada = get_user_model().objects.create(username="ada", is_staff=True, is_superuser=True)
    sent: list[tuple[int, int]] = []
    with actions.dispatching_to(lambda step, attempt, countdown=0: sent.append((step, attempt))):
        pipeline = actions.create_pipeline(
            actor=ada, slug="evil", definition=EVIL_PIPELINE, team=team
        )
        run = actions.trigger_run(pipeline, actor=ada, parameters={"version": EVIL_PARAMETER})
        assert sent, "the build step was dispatched"
        executors.execute_step(*sent[0])
    logged = "\n".join(LogChunk.objects.filter(step__stage__run=run).values_list("text", flat=True))
    assert EVIL_OUTPUT in logged, logged

    client = Client()
    client.force_login(ada)
    pages = {
        "overview": "/",
        "board": "/board/",
        "pipelines": "/pipelines/",
        "pipeline": f"/pipelines/{pipeline.slug}/",
        "versions": f"/pipelines/{pipeline.slug}/versions/",
        "run": f"/runs/{run.pk}/",
    }
    problems = []
    for label, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, (label, response.status_code)
        body = response.content.decode()
        problems += check_response(label, response)  # an injected handler or script shows
        for raw in (EVIL_NAME, EVIL_OUTPUT, EVIL_PARAMETER, "<b>bold</b>", "<i>Evil</i>"):
            if raw in body:
                problems.append(f"{label}: {raw!r} unescaped")
        if "&lt;script&gt;alert(1)&lt;/script&gt;" not in body and label != "versions":
            problems.append(f"{label}: the pipeline's name is not shown (escaped)")
    run_page = client.get(f"/runs/{run.pk}/").content.decode()
    if "&lt;img src=x onerror=alert(2)&gt;" not in run_page:
        problems.append("run: the step's output is not shown (escaped)")
    if "&quot;&gt;&lt;svg onload=alert(3)&gt;" not in run_page:
        problems.append("run: the parameter is not shown (escaped)")
    assert not problems, "\n".join(problems)
