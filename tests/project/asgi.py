"""The test project's ASGI application: the push locations and the site in one app, as
a project serves them under uvicorn, daphne, granian or hypercorn."""

from pushserver.asgi import get_asgi_application

application = get_asgi_application()
