-- The orders service: one row per order. The items live in the row as a JSON array
-- ([{"product_id","quantity","unit_price_cents"}]) so that an order and its items are written
-- by one statement, hence atomically (see components/orders/src/lib.rs).
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    total_cents INTEGER NOT NULL,
    items       TEXT    NOT NULL,
    reason      TEXT,
    created_at  INTEGER NOT NULL
);

CREATE INDEX orders_by_user ON orders (user_id, id);
