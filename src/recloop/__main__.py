"""``python -m recloop`` runs the command line, like the ``recloop`` script."""

from recloop.cli import app

if __name__ == "__main__":
    app()
