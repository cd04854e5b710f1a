"""The example application: a small HTTP service over the food truck database.

GET /healthz answers 200 while the process runs; GET /readyz answers 200 once the database is reachable and at an
Alembic revision (503 otherwise); GET / returns the database's revision as JSON. The database URL comes from
$DATABASE_URL (the chart's `database.urlEnv`). Standard library plus the image's SQLAlchemy and psycopg only.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import create_engine, text


def database_url() -> str:
    url = os.environ.get(os.environ.get("APP_DATABASE_URL_ENV", "DATABASE_URL"), "")
    scheme, _, rest = url.partition("://")
    return "postgresql+psycopg://" + rest if scheme in ("postgres", "postgresql") else url


ENGINE = create_engine(database_url(), pool_pre_ping=True, connect_args={"connect_timeout": 3})


def revision() -> str | None:
    with ENGINE.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        try:
            rev = revision()
        except Exception as e:  # noqa: BLE001 (any database error makes the app unready)
            return self.reply(503, {"error": type(e).__name__})
        if self.path == "/readyz":
            return self.reply(200 if rev else 503, {"revision": rev})
        return self.reply(200, {"revision": rev, "version": os.environ.get("APP_VERSION", "")})

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"example-app listening on :{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
