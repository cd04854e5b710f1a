"""Demo and test data for the two example projects (``migrations/foodtruck``, ``migrations/wholesale``).

``seed_foodtruck(url)`` and ``seed_wholesale(url)`` apply the base revision (0001) and insert data: the food truck's
is clean; the wholesale one has a few rows that violate the constraints of ``production_safety_constraints``, plus
NULL cases that must NOT count (a NULL passes a CHECK; a NULL foreign key is not checked). ``WHOLESALE_VIOLATIONS``
is what the precheck must report, constraint by constraint, following PostgreSQL's semantics.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from schemagate.contract.dburl import sqlalchemy_url
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import upgrade


def migrations_dir() -> Path:
    """The repository's ``migrations/`` (editable install, ``make demo``), else ``./migrations``."""
    here = Path(__file__).resolve().parents[2] / "migrations"
    return here if here.is_dir() else Path.cwd() / "migrations"


def project(name: str) -> Path:
    return migrations_dir() / name / "alembic.ini"


FOODTRUCK_SQL = """
INSERT INTO menu_items (id, name, price, stock) VALUES
  ('m1', 'Carnitas taco', 3.50, 40), ('m2', 'Veggie burrito', 8.00, 12), ('m3', 'Churros', 4.25, 0),
  ('m4', 'Horchata', 3.00, NULL);
INSERT INTO orders (id, customer_name, status, total) VALUES ('o1', 'Ana', 'PAID', 15.00), ('o2', 'Ben', 'PENDING', 8.00);
INSERT INTO order_items (id, order_id, menu_item_id, quantity) VALUES
  ('oi1', 'o1', 'm1', 2), ('oi2', 'o1', 'm2', 1), ('oi3', 'o2', 'm2', 1);
"""

WHOLESALE_SQL = """
INSERT INTO retailers (id, name) VALUES ('r1', 'Corner Shop'), ('r2', 'Kiosk'), ('r3', 'Deli'), ('r4', 'Bakery');
INSERT INTO wholesalers (id, name) VALUES ('w1', 'FreshCo'), ('w2', 'BulkMart');
INSERT INTO credit_accounts (id, retailer_id, credit_limit, used_credit) VALUES
  ('ca1', 'r1', 1000, 200),     -- clean
  ('ca2', 'r2', 500, 800),      -- used_credit > credit_limit
  ('ca3', 'r3', NULL, 300),     -- NULL limit: passes both checks
  ('ca4', 'r4', -50, NULL);     -- negative limit (NULL used_credit passes the limit check)
INSERT INTO orders (id, retailer_id, wholesaler_id, final_wholesaler_id, status, total_amount, deleted_at) VALUES
  ('o1', 'r1', 'w1', 'w1', 'CONFIRMED', 120.00, NULL),
  ('o2', 'r2', 'w1', NULL, 'PENDING_BIDS', 0, NULL),      -- zero total
  ('o3', 'r3', NULL, NULL, 'DRAFT', NULL, NULL),          -- NULL total: passes
  ('o4', 'r1', 'w2', 'w2', 'DELIVERED', 55.50, now());
INSERT INTO credit_transactions (id, retailer_id, order_id, amount, type) VALUES
  ('ct1', 'r1', 'o1', 100, 'DEBIT'),
  ('ct2', 'r2', 'o2', 0, 'DEBIT'),            -- zero amount
  ('ct3', 'r2', NULL, -20, 'CREDIT'),         -- negative amount
  ('ct4', 'r3', NULL, 50, 'DEBIT'),           -- NULL order: not checked by the foreign key
  ('ct5', 'r4', 'o-deleted', 75, 'DEBIT');    -- orphan: its order no longer exists
INSERT INTO ledger_entries (id, retailer_id, order_id, amount, description) VALUES
  ('le1', 'r1', 'o1', 100, 'order o1'),
  ('le2', 'r2', 'o2', 0, 'zero entry'),       -- zero amount
  ('le3', 'r3', NULL, NULL, 'memo');          -- NULL amount: passes
INSERT INTO retailer_payments (id, retailer_id, amount) VALUES ('rp1', 'r1', 250), ('rp2', 'r2', 0);
INSERT INTO wholesaler_products (id, wholesaler_id, name, price, stock, reserved_stock) VALUES
  ('p1', 'w1', 'Flour 25kg', 18.00, 10, 2),   -- clean
  ('p2', 'w1', 'Sugar 10kg', 9.00, -3, 0),    -- negative stock (and stock < reserved)
  ('p3', 'w1', 'Oil 5l', 12.00, 5, 8),        -- reserved > stock
  ('p4', 'w2', 'Salt 1kg', 1.00, NULL, 4),    -- NULL stock: passes all three
  ('p5', 'w2', 'Rice 5kg', 6.00, 7, NULL),    -- NULL reserved: passes all three
  ('p6', 'w2', 'Beans 2kg', 4.00, 2, -1);     -- negative reservation
INSERT INTO stock_reservations (id, order_id, product_id, quantity) VALUES
  ('sr1', 'o1', 'p1', 2), ('sr2', 'o2', 'p3', 0), ('sr3', 'o3', 'p4', NULL);
"""

# constraint -> violating rows (PostgreSQL semantics: CHECK fails only when FALSE; MATCH SIMPLE FK skips NULLs)
WHOLESALE_VIOLATIONS = {
    "check_credit_account_limit": 1,
    "check_credit_account_positive": 1,
    "check_credit_transaction_amount": 2,
    "check_ledger_entry_amount": 1,
    "check_payment_amount": 1,
    "check_stock_non_negative": 1,
    "check_reserved_stock_non_negative": 1,
    "check_stock_availability": 2,
    "check_order_amount_positive": 1,
    "check_reservation_quantity_positive": 1,
    "credit_transactions_order_id_fkey": 1,
}
WHOLESALE_TOTAL = sum(WHOLESALE_VIOLATIONS.values())


def _seed(config: Path, url: str, sql: str) -> None:
    upgrade(Target(config, "0001", url))
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def seed_foodtruck(url: str) -> None:
    _seed(project("foodtruck"), url, FOODTRUCK_SQL)


def seed_wholesale(url: str) -> None:
    _seed(project("wholesale"), url, WHOLESALE_SQL)
