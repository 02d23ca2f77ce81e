-- Stock as a ledger: every change is a movement, and a product's available stock is the sum of
-- its movements. `set` movements come from PUT /inventory (the difference to the new level),
-- `reserve` and `release` ones from an order's reservation. Each operation of the service is
-- one INSERT: SQLite runs it as one transaction that takes the write lock before it reads, so
-- it is all-or-nothing and serialised against every other operation without a BEGIN ... COMMIT
-- spanning several calls.
CREATE TABLE movements (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id INTEGER NOT NULL,
    delta      INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('set', 'reserve', 'release')),
    order_id   INTEGER,
    created_at INTEGER NOT NULL,
    CHECK ((kind = 'set') = (order_id IS NULL))
);

CREATE INDEX movements_by_product ON movements (product_id);

-- An order reserves a product once and releases it once.
CREATE UNIQUE INDEX movements_by_order ON movements (order_id, kind, product_id) WHERE order_id IS NOT NULL;
