"""What passing a 20 MB artifact between stages costs, against a plain copy of the same file
through the same storage backend, measured in the same run (issue 17).

    .venv/bin/python benchmarks/artifacts.py [--size-mb 20] [--rounds 7] [--no-s3]

Artifact path (what a run pays): `artifacts.collect` + `artifacts.store` (the producing
step's files checked, streamed to storage with their SHA-256 in one pass) and
`artifacts._download` (the receiving stage's copy from storage into its workspace, digest
verified, written beside the target and renamed) — the code the executor runs.
Plain copy: `storage.save(name, File(fh))` of the same file, then `storage.open` and a
buffered copy into a file of the other workspace. Both for FileSystemStorage (a temporary
directory) and, unless --no-s3, S3Storage against moto's standalone server on 127.0.0.1
(PyPI moto[server], installed by the dev extras). Rounds alternate the two paths; the
figure is the ratio of the medians. No database is used. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

import harness  # noqa: E402


def _setup(tmp: Path) -> None:
    os.environ.setdefault("CLEARWAY_VAR_DIR", str(tmp / "var"))
    import django

    django.setup()


def _plain_copy(storage, source: Path, dest: Path, name: str) -> None:
    from django.core.files import File

    with open(source, "rb") as fh:
        key = storage.save(name, File(fh, name=source.name))
    with storage.open(key, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
    storage.delete(key)


def _artifact_path(artifacts, storage, producer: Path, consumer: Path, run_id: int) -> None:
    step = SimpleNamespace(
        pk=run_id,
        attempt=1,
        stage_id=1,
        config={"artifacts": [{"name": "bundle", "path": "bundle.bin"}]},
    )
    run = SimpleNamespace(pk=run_id, version_id=None, version=None)
    files = artifacts.collect(step, producer)
    [row] = artifacts.store(step, run, producer, files)
    artifacts._download(row, consumer, None)
    storage.delete(row.storage_key)


def measure(name: str, storage_alias_options: dict, tmp: Path, size: int, rounds: int) -> dict:
    from django.conf import settings
    from django.core.files.storage import storages

    from orchestrator import artifacts

    settings.STORAGES = {**settings.STORAGES, "artifacts": storage_alias_options}
    storages._storages.pop("artifacts", None)
    storages.__dict__.pop("backends", None)
    storage = storages["artifacts"]
    producer, consumer = tmp / f"{name}-producer", tmp / f"{name}-consumer"
    producer.mkdir()
    consumer.mkdir()
    source = producer / "bundle.bin"
    with open(source, "wb") as fh:
        fh.write(os.urandom(size))
    plain, artifact = [], []
    _plain_copy(storage, source, consumer / "warm.bin", "warm/bundle.bin")  # warm-up
    for i in range(rounds):
        t0 = time.perf_counter()
        _plain_copy(storage, source, consumer / "copy.bin", f"plain/{i}/bundle.bin")
        plain.append(time.perf_counter() - t0)
        (consumer / "bundle.bin").unlink(missing_ok=True)
        t0 = time.perf_counter()
        _artifact_path(artifacts, storage, producer, consumer, 1000 + i)
        artifact.append(time.perf_counter() - t0)
        assert (consumer / "bundle.bin").stat().st_size == size
    p, a = statistics.median(plain), statistics.median(artifact)
    return {
        "backend": name,
        "size_bytes": size,
        "rounds": rounds,
        "plain_copy_ms": {"median": round(p * 1000, 1), "min": round(min(plain) * 1000, 1)},
        "artifact_ms": {"median": round(a * 1000, 1), "min": round(min(artifact) * 1000, 1)},
        "ratio_median": round(a / p, 3),
        "goal": "<= 1.5",
        "met": a / p <= 1.5,
    }


def _moto(tmp: Path):
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        return None, None
    port = harness.free_port()
    log = open(tmp / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(  # noqa: S603
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while not harness.port_open(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            return None, None
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    size = int(args.size_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="clearway-bench-artifacts-") as name:
        tmp = Path(name)
        _setup(tmp)
        results = [
            measure(
                "filesystem",
                {
                    "BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(tmp / "store")},
                },
                tmp,
                size,
                args.rounds,
            )
        ]
        if not args.no_s3:
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            proc, endpoint = _moto(tmp)
            if proc is not None:
                try:
                    import boto3

                    boto3.client(
                        "s3", endpoint_url=endpoint, region_name="us-east-1"
                    ).create_bucket(Bucket="bench")
                    from orchestrator.settings import _artifact_storage

                    options = _artifact_storage(
                        f"s3://bench/clearway?endpoint_url={endpoint}&region=us-east-1"
                    )
                    results.append(measure("s3 (moto)", options, tmp, size, args.rounds))
                finally:
                    proc.terminate()
                    proc.wait(10)
            else:
                results.append({"backend": "s3 (moto)", "skipped": "moto_server not installed"})
    print(
        json.dumps(
            {"benchmark": "artifacts", "load": os.getloadavg(), "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
