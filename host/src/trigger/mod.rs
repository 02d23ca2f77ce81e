//! How work reaches a component: incoming HTTP requests (and in-process chained requests),
//! and messages of its `[[trigger.redis]]` subscription.

pub mod body;
pub mod http;
pub mod messages;
