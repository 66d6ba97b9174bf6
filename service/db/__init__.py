"""Persistence: ORM models, sessions, the repository layer and migrations."""
