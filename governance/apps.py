from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance"

    def ready(self) -> None:
        from django.conf import settings

        from . import rego, signals  # noqa: F401  (signals: login audit, permission-change audit)

        # The evaluator pool is Django-free; it learns the sandbox setting from here.
        rego.configure_sandbox(getattr(settings, "CLEARWAY", {}).get("SANDBOX", "on"))
