"""Create (or recreate) the example's orders table in PostgreSQL, as the shop's own
application would have it: customer names, phone numbers and postcodes beside each order.

Usage: python3 create-orders.py [URL]   (default postgresql://postgres@127.0.0.1:5432/test)
"""

from __future__ import annotations

import sys

import psycopg

URL = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"

ORDERS = [
    (1001, "2026-03-02", "Li Wei", "13800138001", "200030", "Shanghai", "desk lamp", "129.00"),
    (1002, "2026-03-02", "张敏", "13800138002", "100020", "Beijing", "office chair", "899.50"),
    (1003, "2026-03-03", "Chen Jie", "13800138003", "518000", "Shenzhen", "monitor", "1499.00"),
    (1004, "2026-03-04", "Li Wei", "13800138001", "200030", "Shanghai", "keyboard", "249.90"),
    (1005, "2026-03-05", "王芳", "13800138005", "310000", "Hangzhou", "desk lamp", "129.00"),
]

with psycopg.connect(URL, connect_timeout=5) as db:
    db.execute("DROP TABLE IF EXISTS example_orders")
    db.execute(
        "CREATE TABLE example_orders (order_id integer PRIMARY KEY, ordered_on date NOT NULL, "
        "customer_name text NOT NULL, customer_phone text, postcode text, city text, "
        "item text, amount numeric(10, 2))"
    )
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO example_orders VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", ORDERS
        )
print(f"created table example_orders with {len(ORDERS)} orders")
