from django.apps import AppConfig
from django.conf import settings


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance"

    def ready(self) -> None:
        # Start-up imports (the documented exception to "no import inside a function"):
        # models cannot be imported before the app registry is ready.
        from django.contrib.auth.signals import user_logged_in

        from . import (
            checks,  # noqa: F401  (system checks of the audit evidence settings)
            credentials,
            permissions,  # noqa: F401  (registers the rule set of .restrict())
            rego,
            signals,  # noqa: F401  (login audit, permission-change audit)
        )

        user_logged_in.connect(credentials.on_login, dispatch_uid="clearway-session-clocks")

        # The evaluator pool is Django-free; it learns the sandbox setting from here.
        rego.configure_sandbox(getattr(settings, "CLEARWAY", {}).get("SANDBOX", "on"))
