"""The contract between schemagate's two planes (standard library only).

The operator (control plane: ``core``, ``k8s``, ``handlers``, ...) and the steps that run in Jobs and on a laptop
(``runner``, ``analysis``, and the injected runner copied into the application's image) share these modules, so
each rule exists once:

- ``names``: API group/version/kind/plural, labels, annotations, environment-variable names, ``Step``, ``Phase``.
- ``durations``: the one duration grammar (the CRD's pattern) with ``to_seconds()`` and ``to_postgres()``.
- ``stepresult``: the JSON result every step prints, its exit codes and the termination-message form.
- ``redact``: credential masking for every message, log line and status field.
- ``sqlkind``: the one classifier of captured SQL statements (``dml``, ``read``, ``ddl``, ``other``).
- ``errors``: the exception tree, the translation of foreign exceptions, the step boundary.
- ``checks``: the one parser of user checks (``UserCheck.parse``).

An import-linter contract keeps this package on the standard library: the injected runner copies it into
application images that have only Python, SQLAlchemy and Alembic.
"""
