"""Event-store schema revisions."""
