-- The users service: accounts with an argon2id password hash (PHC string).
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    -- Unix seconds.
    created_at INTEGER NOT NULL
);

-- One account per email (stored lower-cased and trimmed): a duplicate insert fails, and the
-- service answers 409.
CREATE UNIQUE INDEX users_email ON users (email);
