"""The HTTP front door the PMP calls: ``prefsync serve`` runs ``app.create_app``."""
