"""Publishes COUNT events at RATE/s to the bare group with channels_redis group_send, from
its own process (as a worker would), and prints the publish time of every seq as JSON.

    REDIS_URL=redis://127.0.0.1:6379/11 DJANGO_SETTINGS_MODULE=bare_channels.settings \
        python benchmarks/bare_channels/publisher.py COUNT RATE [--out FILE]

Per seq: t_start (just before group_send) and t_sent (group_send returned).

The event has the shape and about the size of a Clearway step.updated event.
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bare_channels.settings")

import django  # noqa: E402

django.setup()

from channels.layers import get_channel_layer  # noqa: E402

from bare_channels.consumers import GROUP  # noqa: E402


def event(seq: int) -> dict:
    status = ("queued", "running", "succeeded")[seq % 3]
    return {
        "type": "step.updated",
        "run": 1,
        "seq": seq,
        "data": {
            "id": 1000 + seq,
            "stage": 500 + seq // 6,
            "name": f"step-{seq // 6}",
            "status": status,
            "attempt": 1,
            "exit_code": 0 if status == "succeeded" else None,
            "error": "",
            "started_at": "2026-11-28T01:00:00.123456+00:00",
            "finished_at": "2026-11-28T01:00:01.123456+00:00" if status == "succeeded" else None,
        },
    }


async def main(count: int, rate: float) -> dict:
    layer = get_channel_layer()
    published: dict[int, dict] = {}
    send_ms = []
    start = time.time()
    for seq in range(1, count + 1):
        delay = start + (seq - 1) / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        message = {"type": "bench.event", "event": event(seq)}
        t0 = time.time()
        await layer.group_send(GROUP, message)
        t1 = time.time()
        published[seq] = {"t_start": t0, "t_sent": t1, "type": "step.updated"}
        send_ms.append((t1 - t0) * 1000)
    send_ms.sort()
    return {
        "published": count,
        "elapsed_s": round(time.time() - start, 3),
        "group_send_ms_p50": round(send_ms[len(send_ms) // 2], 3),
        "group_send_ms_max": round(send_ms[-1], 3),
        "times": published,
        "final_seq": count,
    }


if __name__ == "__main__":
    result = json.dumps(asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]))))
    if "--out" in sys.argv:
        Path(sys.argv[sys.argv.index("--out") + 1]).write_text(result)
    else:
        print(result)
