"""The HTTP service started by ``recloop serve``: FastAPI app, auth, limits, routes."""
