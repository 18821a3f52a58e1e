# Kept (empty) for projects that import pushserver.models, as the original shipped one.
