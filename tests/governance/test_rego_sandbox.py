"""Policies get no network and no files: network built-ins are refused at save/publish with
their line and column, and the evaluators run under bubblewrap in their own network
namespace, so a policy that got past the check still reaches nothing (real bwrap, real
sockets)."""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from governance import policies, rego
from governance.models import AuditEvent, Policy

ROOT = Path(__file__).resolve().parents[2]

if shutil.which("bwrap") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("bubblewrap is missing: run .ci/sandbox-deps")
    pytest.skip(
        "bubblewrap (bwrap) is not installed: run .ci/sandbox-deps", allow_module_level=True
    )


@pytest.fixture
def listener():
    """A listening TCP socket on 127.0.0.1: the address a policy tries to reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connections(server: socket.socket) -> int:
    """Connections waiting on the socket. The kernel completes a TCP handshake before
    accept(), and http.send has returned by the time the decision exists, so a connection
    made by the policy is already in the backlog: no wait needed."""
    count = 0
    while select.select([server], [], [], 0)[0]:
        conn, _ = server.accept()
        conn.close()
        count += 1
    return count


def calling(port: int) -> str:
    return f"""package clearway.exfiltrate

deny contains msg if {{
	response := http.send({{"method": "get", "url": "http://127.0.0.1:{port}/", "timeout": "2s"}})
	msg := sprintf("status %v", [response.status_code])
}}
"""


@pytest.fixture
def fresh_pool(monkeypatch):
    rego.shutdown_pool()
    yield monkeypatch
    monkeypatch.undo()
    rego.configure_sandbox("on")
    rego.shutdown_pool()


def test_http_send_is_refused_with_its_line_and_column(listener):
    port = listener.getsockname()[1]
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(calling(port))
    (error,) = info.value.errors
    assert (error.file, error.line, error.column) == ("policy.rego", 4, 14)
    assert error.message.startswith("`http.send` is not allowed in a Clearway policy")
    assert connections(listener) == 0


def test_dns_lookups_are_refused_too():
    source = 'package a\n\ndeny contains "x" if {\n  net.lookup_ip_addr("example.com")\n}\n'
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    assert [(e.line, e.column) for e in info.value.errors] == [(4, 3)]
    assert "`net.lookup_ip_addr` is not allowed" in info.value.errors[0].message


@pytest.mark.django_db
def test_a_policy_calling_http_send_is_not_saved_or_published(admin_user, listener):
    port = listener.getsockname()[1]
    events = AuditEvent.objects.count()
    with pytest.raises(rego.PolicyCompileError, match="line 4, column 14"):
        policies.create_policy(
            actor=admin_user, name="exfiltrate", source=calling(port), enforcement="advisory"
        )
    assert not Policy.objects.exists()
    ok = policies.create_policy(
        actor=admin_user,
        name="ok",
        source='package a\n\ndeny contains "x" if false\n',
        enforcement="advisory",
    )
    with pytest.raises(rego.PolicyCompileError, match="http.send"):
        policies.save_draft(ok, actor=admin_user, source=calling(port))
    ok.refresh_from_db()
    assert "http.send" not in ok.source and ok.current_version is None
    assert AuditEvent.objects.count() == events + 1  # the create of "ok" only
    assert connections(listener) == 0


def test_past_the_check_the_sandbox_lets_no_connection_out(listener, fresh_pool):
    port = listener.getsockname()[1]
    fresh_pool.setattr(rego, "_SKIP_BUILTIN_CHECK", True)
    decision = rego.evaluate(calling(port), {}, name="exfiltrate")
    assert decision.result == "error"  # the gate fails closed
    assert not decision.allowed
    assert "http.send" in decision.error and "127.0.0.1" in decision.error
    assert connections(listener) == 0


def test_without_the_sandbox_the_same_policy_does_connect(listener, fresh_pool, caplog):
    """The control experiment: the check skipped and the sandbox off, the connection is
    made — so the test above shows the sandbox, not a broken request, stops it."""
    port = listener.getsockname()[1]
    fresh_pool.setattr(rego, "_SKIP_BUILTIN_CHECK", True)
    fresh_pool.setattr(rego, "_warned_unsandboxed", False)
    rego.configure_sandbox("off")
    with caplog.at_level(logging.WARNING, logger="clearway.rego"):
        decision = rego.evaluate(calling(port), {}, name="exfiltrate", timeout=5)
    assert connections(listener) == 1
    assert decision.result == "error"  # nothing answered the request
    assert any("CLEARWAY_SANDBOX=off" in r.getMessage() for r in caplog.records)


def test_without_bwrap_the_pool_fails_closed_and_says_how_to_fix_it(fresh_pool):
    fresh_pool.setattr(rego.shutil, "which", lambda name: None)
    decision = rego.evaluate('package a\n\ndeny contains "x" if false\n', {}, name="p")
    assert decision.result == "error"
    assert "bubblewrap (bwrap) is not installed" in decision.error
    assert "sudo apt-get install bubblewrap" in decision.error
    assert "CLEARWAY_SANDBOX=off" in decision.error
    with pytest.raises(rego.PolicyCompileError, match="install bubblewrap"):
        rego.compile_policy('package a\n\ndeny contains "x" if false\n')


def test_an_unknown_sandbox_setting_is_refused():
    with pytest.raises(ValueError, match='"on" or "off"'):
        rego.configure_sandbox("maybe")


def test_opa_runtime_shows_nothing_of_the_host(fresh_pool):
    fresh_pool.setenv("CLEARWAY_TEST_SECRET", "hunter2")
    source = "package a\n\ndeny contains json.marshal(opa.runtime()) if true\n"
    assert rego.evaluate(source, {}).deny == ["{}"]


def test_the_sandbox_shows_no_clearway_file(tmp_path):
    """The evaluator's view of the file system: /usr, the Python installation, the OPA
    binding and the evaluator script; not the project (settings, var/, the SQLite file)."""
    read_end, write_end = os.pipe()
    try:
        argv = rego._sandbox_argv(512, write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    info = argv.index("--info-fd")
    python = argv[info + 2]
    probe = (
        "import json, os, socket; paths = json.loads(os.environ.get('P', '[]')) or %s; "
        "print(json.dumps({'seen': [p for p in paths if os.path.exists(p)], "
        "'interfaces': [n for _, n in socket.if_nameindex()], "
        "'root': sorted(os.listdir('/')), 'env': dict(os.environ), "
        "'writable': [d for d in ('/', '/usr', '/clearway', '/tmp') if os.access(d, os.W_OK)]}))"
    )
    secret = tmp_path / "key"
    secret.write_text("not for policies")
    hidden = [
        str(ROOT / "orchestrator" / "settings.py"),
        str(ROOT / "var"),
        str(ROOT / "governance" / "models.py"),
        str(secret),
        "/etc/passwd",
        "/proc/1",
    ]
    command = argv[:info] + [python, "-I", "-S", "-c", probe % json.dumps(hidden)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, env={})
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["seen"] == []
    assert view["writable"] == ["/tmp"]  # a read-only root; /tmp is the sandbox's own
    assert view["interfaces"] == ["lo"]  # its own network namespace: a loopback only
    assert "clearway" in view["root"] and "home" not in view["root"]
    assert set(view["env"]) <= {"PATH", "LANG", "LC_ALL", "GOMEMLIMIT", "PWD", "LC_CTYPE"}
