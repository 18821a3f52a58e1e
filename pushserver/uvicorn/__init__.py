"""What pushserver adds to uvicorn: a writer behind its ``send`` (:mod:`.writer`).

uvicorn serves :mod:`pushserver.asgi` as it is; nothing here changes how it serves. The
fan-out finds the writer by the class of the object whose method ``send`` is
(:data:`pushserver.engine.KNOWN_OWNERS`), so the module is imported only under uvicorn.
"""
