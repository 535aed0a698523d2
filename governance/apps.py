from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance"

    def ready(self) -> None:
        # Start-up imports (the documented exception to "no import inside a function"):
        # models cannot be imported before the app registry is ready.
        from . import (
            permissions,  # noqa: F401  (registers the rule set of .restrict())
            signals,  # noqa: F401  (login audit, permission-change audit)
        )
