"""Real receivers for the audit evidence tests, each on a free port of 127.0.0.1: Debian's
rsyslog (a syslog SIEM), moto's standalone S3 server, and an HTTPS JSON receiver with a
self-signed certificate made here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..tls import self_signed_cert
from .conftest import ROOT, Proc, _port_open, free_port, require, wait_for

RSYSLOGD = shutil.which("rsyslogd") or (
    "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
)


class HttpsReceiver:
    """tests/integration/siem_receiver.py as a process that can be killed and restarted on the
    same port; `events()` reads what it acknowledged."""

    def __init__(self, directory: Path, log_dir: Path, token: str = ""):
        self.cert, self.key = self_signed_cert(directory)
        self.out = directory / "received.jsonl"
        self.port = free_port()
        self.token = token
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.url = f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        script = str(ROOT / "tests" / "integration" / "siem_receiver.py")
        args = [sys.executable, script, str(self.port), str(self.cert), str(self.key)]
        args += [str(self.out), self.token]
        self.proc = Proc("siem-receiver", args, {"PATH": "/usr/bin:/bin"}, self.log_dir)
        wait_for(lambda: _port_open("127.0.0.1", self.port), 20, what="the HTTPS receiver")

    def kill(self) -> None:
        import signal

        if self.proc:
            self.proc.stop(signal.SIGKILL)

    def events(self) -> list[dict]:
        if not self.out.exists():
            return []
        events = []
        for line in self.out.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # torn by the kill: never acknowledged, so it is resent
                continue
        return events


class Rsyslog:
    """rsyslogd in the foreground with its own configuration: TCP input on a free port,
    every message's raw text appended to `out` (a direct queue, so a message is written by
    the thread that read it, before the connection's end of stream is processed)."""

    def __init__(self, directory: Path, log_dir: Path):
        require(RSYSLOGD is not None, "rsyslogd (Debian package rsyslog; .ci/audit-deps)")
        self.dir = directory
        self.out = directory / "rsyslog-out.log"
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.url = f"syslog+tcp://127.0.0.1:{self.port}"
        (directory / "rsyslog-work").mkdir(exist_ok=True)
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{directory / "rsyslog-work"}")\n'
            'module(load="imtcp")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            'ruleset(name="clearway" queue.type="Direct") {\n'
            f'  action(type="omfile" file="{self.out}" template="raw"'
            ' flushOnTXEnd="on" asyncWriting="off")\n'
            "}\n"
            f'input(type="imtcp" port="{self.port}" ruleset="clearway")\n'
        )

    def start(self) -> None:
        pid = self.dir / "rsyslog.pid"
        pid.unlink(missing_ok=True)
        args = [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pid)]
        self.proc = Proc("rsyslog", args, {"PATH": "/usr/sbin:/usr/bin:/bin"}, self.log_dir)
        wait_for(
            lambda: _port_open("127.0.0.1", self.port) or self.proc.popen.poll() is not None,
            20,
            what="rsyslogd to listen",
        )
        assert self.proc.popen.poll() is None, self.proc.output()

    def kill(self) -> None:
        import signal

        if self.proc:
            self.proc.stop(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []


class MotoS3:
    """moto's standalone server (PyPI moto[server]) as an S3-compatible endpoint."""

    def __init__(self, log_dir: Path):
        exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        require(Path(exe).exists(), "moto_server (pip install 'moto[server]')")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [exe, "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = Proc("moto", args, {"PATH": "/usr/bin:/bin"}, log_dir)
        wait_for(
            lambda: _port_open("127.0.0.1", self.port) or self.proc.popen.poll() is not None,
            30,
            what="moto_server to listen",
        )
        assert self.proc.popen.poll() is None, self.proc.output()

    def stop(self) -> None:
        self.proc.stop()
