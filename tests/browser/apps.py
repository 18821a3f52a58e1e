from django.apps import AppConfig


class BrowserTestsConfig(AppConfig):
    name = "tests.browser"
    label = "browser_tests"

    def ready(self) -> None:
        from . import views  # noqa: F401  (connects the passthrough signal receivers)
