from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"
    verbose_name = "pushserver demo"

    def ready(self):
        from . import presence  # noqa: F401  (connects the passthrough signal receivers)
