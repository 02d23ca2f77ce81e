//! The channels the shop's events are published on. Each is subscribed with its exact name in
//! spin.toml (one `[[trigger.redis]]` per channel): Spin's Redis trigger subscribes literally,
//! so a pattern such as `order.*` would receive nothing there. `tests/tests/shop_under_spin.rs`
//! reads this file and spin.toml and checks that every channel here has its subscriber.

pub const ORDER_CREATED: &str = "order.created";
pub const ORDER_CONFIRMED: &str = "order.confirmed";
pub const ORDER_CANCELLED: &str = "order.cancelled";
pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";

/// Every channel the orders and payments services publish to.
pub const PUBLISHED_CHANNELS: [&str; 5] = [
    ORDER_CREATED,
    ORDER_CONFIRMED,
    ORDER_CANCELLED,
    PAYMENT_COMPLETED,
    PAYMENT_FAILED,
];
