"""The web console served at ``/console`` by ``recloop serve``: pages over the running service.

Server-rendered HTML (Jinja2) with inline SVG charts and a few lines of script; every asset
ships in the package, so it works offline. Only admin keys log in. See docs/console.md.
"""

from recloop.console.routes import mount

__all__ = ["mount"]
