-- The notifications service: one row per event it was told about. `event_id` is UNIQUE so that
-- a redelivered event (the broker delivers at least once) is recorded only once.
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    user_id    INTEGER NOT NULL,
    channel    TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX notifications_by_user ON notifications (user_id, id);
