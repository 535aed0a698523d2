"""The API's pagination: DRF's limit/offset, bounded. Without a bound, `?limit=` or
`?offset=` beyond a 64-bit integer reached the database and answered 500 (found by the
schemathesis fuzz test); a limit above MAX_LIMIT is cut to it, as DRF does with
`max_limit`, and an offset beyond any table is cut too (it lists nothing either way)."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

MAX_LIMIT = 1000
MAX_OFFSET = 10**15  # below SQLite's and PostgreSQL's 64-bit integers, above any table


class Pagination(LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)
