"""pushserver: a real-time push server for Django.

The core (:mod:`pushserver.message`, :mod:`pushserver.hub`, :mod:`pushserver.backends`,
:mod:`pushserver.protocol`, :mod:`pushserver.config`, :mod:`pushserver.app`) never imports
Django; the Django layer (app config, checks, management command, template tags, signals,
views, :mod:`pushserver.utils.updates`) adapts it to a Django project.
"""

__version__ = "1.0.0.dev0"
