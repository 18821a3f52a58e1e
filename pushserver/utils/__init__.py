"""Django-side helpers: :mod:`pushserver.utils.updates` publishes and builds channel URLs."""
