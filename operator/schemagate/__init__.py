"""schemagate: safe Alembic migrations on Kubernetes (backup, precheck with violation counts, apply, verify)."""

__version__ = "0.1.0"
API_GROUP = "schemagate.dev"
API_VERSION = "v1alpha1"
KIND = "DatabaseMigration"
