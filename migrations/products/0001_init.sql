-- The product catalogue. Prices are integer cents; `updated_at` is Unix seconds.
CREATE TABLE products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL CHECK (length(trim(name)) > 0),
    description TEXT,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    updated_at  INTEGER NOT NULL
);
