"""A stand-in SIEM for the streaming tests: an HTTPS server that takes Splunk HEC-shaped and
generic JSON batches and appends every event it receives, as one JSON line with its seq, to
a file (flushed and fsynced before it answers 200, so an acknowledged event is on disk).

    python tests/integration/siem_receiver.py PORT CERT KEY OUT [TOKEN]
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def events_of(body: str) -> list[dict]:
    text = body.strip()
    if text.startswith('{"source"') or '"events":' in text[:200]:
        doc = json.loads(text)
        if "events" in doc:
            return [{"shape": "generic", **e} for e in doc["events"]]
    decoder, pos, out = json.JSONDecoder(), 0, []
    while pos < len(text):  # HEC: event objects one after the other
        obj, end = decoder.raw_decode(text, pos)
        out.append({"shape": "splunk", "sourcetype": obj.get("sourcetype"), **obj["event"]})
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def main() -> None:
    port, cert, key, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    token = sys.argv[5] if len(sys.argv) > 5 else ""
    out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115
    if out.tell() and not open(out_path, "rb").read()[-1:] == b"\n":  # noqa: SIM115
        out.write("\n")  # a line torn by the previous process's kill stays on its own

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if token and self.headers.get("Authorization", "").split(" ")[-1] != token:
                self.send_response(401)
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            for event in events_of(body):
                out.write(json.dumps(event, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
            reply = b'{"text":"Success","code":0}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
