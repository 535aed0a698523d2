"""A bare Channels project: the reference point of benchmarks/live_fanout.py.

No database, no authentication, no permission checks: a websocket consumer that joins one
group and forwards what it receives, on the same channel layer configuration as Clearway
(channels_redis RedisChannelLayer, capacity 1500, expiry 30). Served by uvicorn exactly like
Clearway: `uvicorn bare_channels.asgi:application --app-dir benchmarks --ws websockets-sansio`
with REDIS_URL set.
"""
