//! The notifications service of the reference application (docs/reference-app.md): turns the
//! events of orders and payments (each channel of `shared::events`) into the e-mails it would send, and
//! records them; `GET /notifications?user=ID` lists a user's, oldest first.
//!
//! The broker delivers at least once, so a notification is keyed by the event's `event_id`: a
//! redelivered event is recorded once. A payload that is not an event is dropped (retrying
//! cannot fix it); a database that fails is an error, so the broker delivers the event again.

use common::events;
use serde::{Deserialize, Serialize};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, Value};

const DATABASE: &str = "notifications";

// ---- HTTP ----

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let segments = common::segments(&req);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let response = match (req.method(), segments.as_slice()) {
        (Method::Get, ["health"]) => common::health("notifications", DATABASE),
        (Method::Get, ["notifications"]) => list_notifications(&req).unwrap_or_else(|response| response),
        (_, ["health"] | ["notifications"]) => common::method_not_allowed(&req),
        _ => common::not_found(format!("no route {}", req.path())),
    };
    Ok(response)
}

/// A notification as it is stored and answered.
#[derive(Debug, Serialize)]
struct Notification {
    id: i64,
    event_id: String,
    user_id: i64,
    channel: String,
    subject: String,
    body: String,
    created_at: i64,
}

fn list_notifications(req: &Request) -> Result<Response, Response> {
    let user_id = common::query_param(req, "user")
        .and_then(|user| user.parse::<i64>().ok())
        .ok_or_else(|| {
            common::error(
                400,
                "invalid request",
                "user: an integer user id is required (?user=ID)",
            )
        })?;
    let result = Connection::open(DATABASE)
        .and_then(|db| {
            db.execute(
                "SELECT id, event_id, user_id, channel, subject, body, created_at \
                 FROM notifications WHERE user_id = ? ORDER BY id",
                &[Value::Integer(user_id)],
            )
        })
        .map_err(|err| database_failed(format!("cannot list notifications: {err}")))?;
    let notifications = result
        .rows
        .iter()
        .map(notification_from_row)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| database_failed("a notification row does not have the expected columns"))?;
    Ok(common::json(200, &notifications))
}

fn notification_from_row(row: &spin_sdk::sqlite::RowResult) -> Option<Notification> {
    Some(Notification {
        id: row.get::<i64>(0)?,
        event_id: row.get::<&str>(1)?.to_string(),
        user_id: row.get::<i64>(2)?,
        channel: row.get::<&str>(3)?.to_string(),
        subject: row.get::<&str>(4)?.to_string(),
        body: row.get::<&str>(5)?.to_string(),
        created_at: row.get::<i64>(6)?,
    })
}

fn database_failed(detail: impl std::fmt::Display) -> Response {
    common::error(503, "service unavailable", format!("database `{DATABASE}`: {detail}"))
}

// ---- events ----

/// An event of the contract's Events table; the fields a type lacks are absent.
#[derive(Debug, Deserialize)]
struct Event {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    order_id: i64,
    user_id: i64,
    total_cents: Option<i64>,
    amount_cents: Option<i64>,
    reason: Option<String>,
}

#[spin_sdk::redis_component]
async fn on_message(message: bytes::Bytes) -> anyhow::Result<()> {
    let event = match serde_json::from_slice::<Event>(&message) {
        Ok(event) => event,
        Err(err) => {
            eprintln!(
                "notifications: dropped a payload that is not an event ({err}): {}",
                shown(&message)
            );
            return Ok(());
        }
    };
    let Some((subject, body)) = email_for(&event) else {
        eprintln!(
            "notifications: dropped event `{}` of unknown type `{}`",
            event.event_id, event.kind
        );
        return Ok(());
    };
    // OR IGNORE: a redelivered event (same event_id) changes nothing.
    Connection::open(DATABASE)
        .and_then(|db| {
            db.execute(
                "INSERT OR IGNORE INTO notifications (event_id, user_id, channel, subject, body, created_at) \
                 VALUES (?, ?, 'email', ?, ?, ?)",
                &[
                    Value::Text(event.event_id.clone()),
                    Value::Integer(event.user_id),
                    Value::Text(subject),
                    Value::Text(body),
                    Value::Integer(common::now_unix()),
                ],
            )
        })
        .map_err(|err| anyhow::anyhow!("notifications: cannot record event `{}`: {err}", event.event_id))?;
    Ok(())
}

/// The subject and body of the e-mail an event calls for; None for a type it does not know.
fn email_for(event: &Event) -> Option<(String, String)> {
    let order = event.order_id;
    let total = money(event.total_cents);
    let amount = money(event.amount_cents);
    let email = match event.kind.as_str() {
        events::ORDER_CREATED => (
            format!("Order {order} received"),
            format!("We received your order {order} of {total} and are processing it."),
        ),
        events::ORDER_CONFIRMED => (
            format!("Order {order} confirmed"),
            format!("Your order {order} of {total} is confirmed."),
        ),
        events::ORDER_CANCELLED => (
            format!("Order {order} cancelled"),
            format!(
                "Your order {order} of {total} was cancelled: {}.",
                event.reason.as_deref().unwrap_or("no reason given")
            ),
        ),
        events::PAYMENT_COMPLETED => (
            format!("Payment for order {order} received"),
            format!("We received your payment of {amount} for order {order}."),
        ),
        events::PAYMENT_FAILED => (
            format!("Payment for order {order} failed"),
            format!("Your payment of {amount} for order {order} was declined."),
        ),
        _ => return None,
    };
    Some(email)
}

/// Cents as an amount for people: `1234` → `12.34`.
fn money(cents: Option<i64>) -> String {
    match cents {
        Some(cents) => {
            let sign = if cents < 0 { "-" } else { "" };
            let cents = cents.unsigned_abs();
            format!("{sign}{}.{:02}", cents / 100, cents % 100)
        }
        None => "an unknown amount".to_string(),
    }
}

/// A payload for a log line: its text, cut short.
fn shown(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).chars().take(200).collect()
}
