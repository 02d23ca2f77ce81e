//! How work reaches a component: incoming HTTP requests (and in-process chained requests).

pub mod body;
pub mod http;
