//! The payments service: a simulated payment gateway on its SQLite database `payments`.
//!
//! `POST /payments` charges an order once: the outcome is drawn at random (success with
//! probability `success_rate`), recorded as `completed` or `failed`, then announced as
//! `payment.completed` or `payment.failed`. A repeat for the same order answers the recorded
//! payment with the status code of the first answer and draws nothing.

use common::events;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, RowResult, Value};

const SERVICE: &str = "payments";
const DATABASE: &str = "payments";
const DEFAULT_SUCCESS_RATE: f64 = 0.95;
const COLUMNS: &str = "id, order_id, user_id, amount_cents, status, created_at";

#[derive(Debug, Clone, Serialize)]
struct Payment {
    id: i64,
    order_id: i64,
    user_id: i64,
    amount_cents: i64,
    status: String,
    created_at: i64,
}

impl Payment {
    fn is_completed(&self) -> bool {
        self.status == "completed"
    }
}

/// The payload of `payment.completed` and `payment.failed` (docs/reference-app.md, Events).
#[derive(Serialize)]
struct PaymentEvent<'a> {
    event_id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    payment_id: i64,
    order_id: i64,
    user_id: i64,
    amount_cents: i64,
}

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(route(&req))
}

fn route(req: &Request) -> Response {
    let segments = common::segments(req);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["health"]) => common::health(SERVICE, DATABASE),
        (Method::Post, ["payments"]) => charge(req),
        (Method::Get, ["payments", id]) => match common::id(id, "payment") {
            Ok(id) => get_payment(id),
            Err(answer) => answer,
        },
        (_, ["health"] | ["payments"] | ["payments", _]) => common::method_not_allowed(req),
        _ => common::not_found(format!("no route {}", req.path())),
    }
}

fn database_failed(err: impl std::fmt::Display) -> Response {
    common::upstream_failed("payments database", err)
}

fn invalid(detail: impl std::fmt::Display) -> Response {
    common::error(400, "invalid request", detail)
}

/// A payment as it was answered the first time: 201 when completed, 402 when declined.
fn payment_answer(payment: &Payment) -> Response {
    if payment.is_completed() {
        return common::json(201, payment);
    }
    common::json(
        402,
        &json!({
            "error": "payment declined",
            "detail": format!("the payment of {} cents for order {} was declined", payment.amount_cents, payment.order_id),
            "payment": payment,
        }),
    )
}

fn get_payment(id: i64) -> Response {
    let found = Connection::open(DATABASE)
        .map_err(database_failed)
        .and_then(|db| query_payment(&db, &format!("SELECT {COLUMNS} FROM payments WHERE id = ?"), id));
    match found {
        Ok(Some(payment)) => common::json(200, &payment),
        Ok(None) => common::not_found(format!("no payment with id {id}")),
        Err(answer) => answer,
    }
}

fn charge(req: &Request) -> Response {
    let fields = match fields_of(req) {
        Ok(fields) => fields,
        Err(answer) => return answer,
    };
    let (order_id, user_id, amount_cents) = match (
        integer_field(&fields, "order_id", i64::MIN),
        integer_field(&fields, "user_id", i64::MIN),
        integer_field(&fields, "amount_cents", 0),
    ) {
        (Ok(order_id), Ok(user_id), Ok(amount_cents)) => (order_id, user_id, amount_cents),
        (Err(answer), _, _) | (_, Err(answer), _) | (_, _, Err(answer)) => return answer,
    };
    let db = match Connection::open(DATABASE) {
        Ok(db) => db,
        Err(err) => return database_failed(err),
    };
    let by_order = format!("SELECT {COLUMNS} FROM payments WHERE order_id = ?");
    match query_payment(&db, &by_order, order_id) {
        Ok(Some(recorded)) => return payment_answer(&recorded),
        Ok(None) => {}
        Err(answer) => return answer,
    }
    let status = match draw_success() {
        Ok(true) => "completed",
        Ok(false) => "failed",
        Err(err) => return common::upstream_failed("random source", err),
    };
    let inserted = db.execute(
        &format!(
            "INSERT INTO payments (order_id, user_id, amount_cents, status, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}"
        ),
        &[
            Value::Integer(order_id),
            Value::Integer(user_id),
            Value::Integer(amount_cents),
            Value::Text(status.into()),
            Value::Integer(common::now_unix()),
        ],
    );
    let payment = match inserted {
        Ok(result) => match result.rows.first().map(payment_of) {
            Some(Some(payment)) => payment,
            Some(None) => return database_failed("a payment row has an unexpected shape"),
            // A concurrent request for the same order recorded (and announces) its payment first.
            None => {
                return match query_payment(&db, &by_order, order_id) {
                    Ok(Some(recorded)) => payment_answer(&recorded),
                    Ok(None) => database_failed(format!("the payment of order {order_id} vanished")),
                    Err(answer) => answer,
                }
            }
        },
        Err(err) => return database_failed(err),
    };
    announce(&payment);
    payment_answer(&payment)
}

/// Publishes the payment's event. The record is the truth: a failed publish is logged, and
/// the payment is answered all the same.
fn announce(payment: &Payment) {
    let kind = if payment.is_completed() {
        events::PAYMENT_COMPLETED
    } else {
        events::PAYMENT_FAILED
    };
    let event = PaymentEvent {
        event_id: format!("payment-{}-{}", payment.order_id, payment.status),
        kind,
        payment_id: payment.id,
        order_id: payment.order_id,
        user_id: payment.user_id,
        amount_cents: payment.amount_cents,
    };
    if let Err(err) = common::publish(kind, &event) {
        eprintln!(
            "payments: payment {} of order {} recorded as {}, but its event was not published: {err}",
            payment.id, payment.order_id, payment.status
        );
    }
}

/// The probability of success: the variable `success_rate` if it is a number in [0, 1].
fn success_rate() -> f64 {
    spin_sdk::variables::get("success_rate")
        .ok()
        .and_then(|rate| rate.trim().parse::<f64>().ok())
        .filter(|rate| (0.0..=1.0).contains(rate))
        .unwrap_or(DEFAULT_SUCCESS_RATE)
}

/// True with probability `success_rate()`: a uniform draw in [0, 1) below the rate, so 0 never
/// succeeds and 1 always does.
fn draw_success() -> Result<bool, getrandom::Error> {
    let bits = getrandom::u64()?;
    // The top 53 bits: every value of an f64 mantissa, uniform in [0, 1).
    let draw = (bits >> 11) as f64 / (1u64 << 53) as f64;
    Ok(draw < success_rate())
}

fn query_payment(db: &Connection, statement: &str, key: i64) -> Result<Option<Payment>, Response> {
    let result = db.execute(statement, &[Value::Integer(key)]).map_err(database_failed)?;
    match result.rows.first() {
        None => Ok(None),
        Some(row) => payment_of(row)
            .map(Some)
            .ok_or_else(|| database_failed("a payment row has an unexpected shape")),
    }
}

/// A row of `COLUMNS` as a payment.
fn payment_of(row: &RowResult) -> Option<Payment> {
    Some(Payment {
        id: row.get::<i64>(0)?,
        order_id: row.get::<i64>(1)?,
        user_id: row.get::<i64>(2)?,
        amount_cents: row.get::<i64>(3)?,
        status: row.get::<&str>(4)?.to_string(),
        created_at: row.get::<i64>(5)?,
    })
}

/// The integer `name` of the body, at least `minimum`, or a 400 naming it.
fn integer_field(fields: &Map<String, Json>, name: &str, minimum: i64) -> Result<i64, Response> {
    match fields.get(name).map(Json::as_i64) {
        None => Err(invalid(format!("`{name}` is required"))),
        Some(Some(value)) if value >= minimum => Ok(value),
        Some(_) if minimum == i64::MIN => Err(invalid(format!("`{name}` must be an integer"))),
        Some(_) => Err(invalid(format!("`{name}` must be an integer >= {minimum}"))),
    }
}

/// The request body as a JSON object, or a 400.
fn fields_of(req: &Request) -> Result<Map<String, Json>, Response> {
    match common::body::<Json>(req)? {
        Json::Object(fields) => Ok(fields),
        _ => Err(invalid("the body must be a JSON object")),
    }
}
