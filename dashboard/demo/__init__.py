"""The Northwind Health demo (docs/demo.md)."""

from .seed import seed

__all__ = ["seed"]
