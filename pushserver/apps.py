from django.apps import AppConfig


class PushServerConfig(AppConfig):
    name = "pushserver"
    verbose_name = "Push server"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            settings,  # noqa: F401  (resets the cached config on setting_changed)
        )
