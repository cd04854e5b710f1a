"""Local-only tools: the embedded PostgreSQL server (CLI embedded mode, demo, tests). Never copied into images."""
