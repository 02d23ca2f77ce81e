//! The orders service of the reference application (docs/reference-app.md): places an order as a
//! saga across users, products, inventory and payments, and shows a user their orders.
//!
//! `POST /orders` validates the user and the products, stores the order `pending`, reserves the
//! stock, charges the user and marks it `confirmed`. A step that fails undoes the ones done
//! before it, in reverse: release the reservation, mark the order `cancelled` with the reason.
//! Every change of state is published (`order.created`, `order.confirmed`, `order.cancelled`);
//! a publish that fails is logged and does not fail the order.

use common::events;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, Value};

const DATABASE: &str = "orders";

#[http_component]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let segments = common::segments(&req);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let response = match (req.method(), segments.as_slice()) {
        (Method::Get, ["health"]) => common::health("orders", DATABASE),
        (Method::Post, ["orders"]) => place_order(&req).await.unwrap_or_else(|response| response),
        (Method::Get, ["orders"]) => list_orders(&req).unwrap_or_else(|response| response),
        (Method::Get, ["orders", id]) => get_order(&req, id).unwrap_or_else(|response| response),
        (_, ["health"] | ["orders"] | ["orders", _]) => common::method_not_allowed(&req),
        _ => common::not_found(format!("no route {}", req.path())),
    };
    Ok(response)
}

/// One line of an order, with the price the product had when it was ordered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderItem {
    product_id: i64,
    quantity: i64,
    unit_price_cents: i64,
}

/// An order as it is stored and answered.
#[derive(Debug, Serialize)]
struct Order {
    id: i64,
    user_id: i64,
    status: String,
    total_cents: i64,
    items: Vec<OrderItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    created_at: i64,
}

/// A line of the request: what and how many, before the price is known.
struct RequestedItem {
    product_id: i64,
    quantity: i64,
}

/// The reason a step of the saga failed: what to answer once it is compensated.
struct StepFailure {
    status: u16,
    error: &'static str,
    reason: String,
}

// ---- POST /orders: the saga ----

async fn place_order(req: &Request) -> Result<Response, Response> {
    let user_id = common::caller(req)?;
    let requested = requested_items(&common::body::<Json>(req)?)?;
    validate_user(user_id).await?;
    let items = priced_items(&requested).await?;
    let total_cents = items
        .iter()
        .try_fold(0i64, |total, item| {
            item.quantity
                .checked_mul(item.unit_price_cents)
                .and_then(|line| total.checked_add(line))
        })
        .ok_or_else(|| invalid("items: the total is too large"))?;

    let db = database()?;
    let mut order = insert_pending_order(&db, user_id, total_cents, items)?;
    publish_event(events::ORDER_CREATED, &order);

    // Step 1: reserve the stock. A 409 reserved nothing (all or nothing); any other failure
    // may have reserved it before failing, so the release (idempotent) runs then too.
    if let Err(failure) = reserve_stock(&order).await {
        if failure.status != 409 {
            release_stock(order.id).await;
        }
        return Err(cancel(&db, &mut order, failure));
    }

    // Step 2: charge the user.
    if let Err(failure) = charge(&order).await {
        release_stock(order.id).await;
        return Err(cancel(&db, &mut order, failure));
    }

    db.execute(
        "UPDATE orders SET status = 'confirmed' WHERE id = ?",
        &[Value::Integer(order.id)],
    )
    .map_err(|err| database_failed(format!("cannot confirm order {}: {err}", order.id)))?;
    order.status = "confirmed".to_string();
    publish_event(events::ORDER_CONFIRMED, &order);
    Ok(common::json(201, &order))
}

/// The items of the request body, checked, with repeated products merged into one line.
fn requested_items(body: &Json) -> Result<Vec<RequestedItem>, Response> {
    let lines = body
        .get("items")
        .and_then(Json::as_array)
        .filter(|lines| !lines.is_empty())
        .ok_or_else(|| invalid("items: a non-empty array of {\"product_id\",\"quantity\"} is required"))?;
    let mut items: Vec<RequestedItem> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let product_id = line
            .get("product_id")
            .and_then(Json::as_i64)
            .ok_or_else(|| invalid(format!("items[{index}].product_id: an integer is required")))?;
        let quantity = line
            .get("quantity")
            .and_then(Json::as_i64)
            .filter(|quantity| *quantity >= 1)
            .ok_or_else(|| invalid(format!("items[{index}].quantity: an integer >= 1 is required")))?;
        match items.iter_mut().find(|item| item.product_id == product_id) {
            Some(item) => {
                item.quantity = item
                    .quantity
                    .checked_add(quantity)
                    .ok_or_else(|| invalid(format!("items[{index}].quantity: too large")))?;
            }
            None => items.push(RequestedItem { product_id, quantity }),
        }
    }
    Ok(items)
}

/// The caller must be a known user.
async fn validate_user(user_id: i64) -> Result<(), Response> {
    let answer = common::call("users", Method::Get, &format!("/users/{user_id}"), None, Some(user_id))
        .await
        .map_err(|err| common::upstream_failed("users", err))?;
    match answer.status {
        404 => Err(invalid(format!("unknown user {user_id}"))),
        _ if answer.is_success() => Ok(()),
        status => Err(common::upstream_failed(
            "users",
            format!("answered {status}: {}", answer.detail()),
        )),
    }
}

/// Each requested item with the current price of its product.
async fn priced_items(requested: &[RequestedItem]) -> Result<Vec<OrderItem>, Response> {
    #[derive(Deserialize)]
    struct Product {
        price_cents: i64,
    }

    let mut items = Vec::with_capacity(requested.len());
    for item in requested {
        let product_id = item.product_id;
        let answer = common::call("products", Method::Get, &format!("/products/{product_id}"), None, None)
            .await
            .map_err(|err| common::upstream_failed("products", err))?;
        if answer.status == 404 {
            return Err(invalid(format!("unknown product {product_id}")));
        }
        if !answer.is_success() {
            let detail = format!(
                "answered {} for product {product_id}: {}",
                answer.status,
                answer.detail()
            );
            return Err(common::upstream_failed("products", detail));
        }
        let product: Product = answer
            .json()
            .map_err(|err| common::upstream_failed("products", format!("product {product_id}: {err}")))?;
        items.push(OrderItem {
            product_id,
            quantity: item.quantity,
            unit_price_cents: product.price_cents,
        });
    }
    Ok(items)
}

async fn reserve_stock(order: &Order) -> Result<(), StepFailure> {
    let items: Vec<Json> = order
        .items
        .iter()
        .map(|item| serde_json::json!({ "product_id": item.product_id, "quantity": item.quantity }))
        .collect();
    let request = serde_json::json!({ "order_id": order.id, "items": items });
    let answer = common::call(
        "inventory",
        Method::Post,
        "/reservations",
        Some(request.to_string().into_bytes()),
        Some(order.user_id),
    )
    .await;
    match answer {
        Ok(answer) if answer.is_success() => Ok(()),
        Ok(answer) if answer.status == 409 => Err(StepFailure {
            status: 409,
            error: "conflict",
            reason: format!("not enough stock: {}", answer.detail()),
        }),
        Ok(answer) => Err(unavailable(
            "inventory",
            format!("answered {}: {}", answer.status, answer.detail()),
        )),
        Err(err) => Err(unavailable("inventory", err)),
    }
}

async fn charge(order: &Order) -> Result<(), StepFailure> {
    let request = serde_json::json!({
        "order_id": order.id,
        "user_id": order.user_id,
        "amount_cents": order.total_cents,
    });
    let answer = common::call(
        "payments",
        Method::Post,
        "/payments",
        Some(request.to_string().into_bytes()),
        Some(order.user_id),
    )
    .await;
    match answer {
        Ok(answer) if answer.is_success() => Ok(()),
        Ok(answer) if answer.status == 402 => Err(StepFailure {
            status: 402,
            error: "payment declined",
            reason: format!("payment declined: {}", answer.detail()),
        }),
        Ok(answer) => Err(unavailable(
            "payments",
            format!("answered {}: {}", answer.status, answer.detail()),
        )),
        Err(err) => Err(unavailable("payments", err)),
    }
}

/// Compensates the reservation. Releasing is idempotent and a 404 means nothing was reserved;
/// a release that fails is logged: the order is cancelled all the same.
async fn release_stock(order_id: i64) {
    let path = format!("/reservations/{order_id}/release");
    match common::call("inventory", Method::Post, &path, None, None).await {
        Ok(answer) if answer.is_success() || answer.status == 404 => {}
        Ok(answer) => eprintln!(
            "orders: cannot release the reservation of order {order_id}: inventory answered {}: {}",
            answer.status,
            answer.detail()
        ),
        Err(err) => eprintln!("orders: cannot release the reservation of order {order_id}: {err}"),
    }
}

/// The last compensation: marks the order cancelled with the reason, publishes it, and builds
/// the answer: the cancelled order with the error shape (`error`, `detail`) and `order_id`.
fn cancel(db: &Connection, order: &mut Order, failure: StepFailure) -> Response {
    let marked = db.execute(
        "UPDATE orders SET status = 'cancelled', reason = ? WHERE id = ?",
        &[Value::Text(failure.reason.clone()), Value::Integer(order.id)],
    );
    if let Err(err) = marked {
        // The order stays `pending` in the database; the answer still tells the caller why.
        eprintln!("orders: cannot mark order {} cancelled: {err}", order.id);
    }
    order.status = "cancelled".to_string();
    order.reason = Some(failure.reason.clone());
    publish_event(events::ORDER_CANCELLED, order);
    let mut answer = serde_json::to_value(&*order).unwrap_or_else(|_| serde_json::json!({}));
    answer["error"] = Json::from(failure.error);
    answer["detail"] = Json::from(failure.reason);
    answer["order_id"] = Json::from(order.id);
    common::json(failure.status, &answer)
}

/// Publishes the event of `order` on `channel` (`order.created`, ...); a failure is only logged.
fn publish_event(channel: &str, order: &Order) {
    let kind = channel.trim_start_matches("order.");
    let mut event = serde_json::json!({
        "event_id": format!("order-{}-{kind}", order.id),
        "type": channel,
        "order_id": order.id,
        "user_id": order.user_id,
        "total_cents": order.total_cents,
    });
    if let Some(reason) = &order.reason {
        event["reason"] = Json::from(reason.as_str());
    }
    if let Err(err) = common::publish(channel, &event) {
        eprintln!("orders: order {}: {err}", order.id);
    }
}

// ---- GET /orders, GET /orders/{id} ----

fn list_orders(req: &Request) -> Result<Response, Response> {
    let user_id = common::caller(req)?;
    let result = database()?
        .execute(
            &format!("{SELECT_ORDER} WHERE user_id = ? ORDER BY id"),
            &[Value::Integer(user_id)],
        )
        .map_err(|err| database_failed(format!("cannot list orders: {err}")))?;
    let orders = result.rows.iter().map(order_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(common::json(200, &orders))
}

fn get_order(req: &Request, id: &str) -> Result<Response, Response> {
    let user_id = common::caller(req)?;
    let order_id = common::id(id, "order")?;
    // Another user's order answers like a missing one: its existence is not the caller's business.
    let result = database()?
        .execute(
            &format!("{SELECT_ORDER} WHERE id = ? AND user_id = ?"),
            &[Value::Integer(order_id), Value::Integer(user_id)],
        )
        .map_err(|err| database_failed(format!("cannot read order {order_id}: {err}")))?;
    match result.rows.first() {
        Some(row) => Ok(common::json(200, &order_from_row(row)?)),
        None => Err(common::not_found(format!("no order with id `{order_id}`"))),
    }
}

// ---- the database ----

/// The columns `order_from_row` reads, in its order.
const SELECT_ORDER: &str = "SELECT id, user_id, status, total_cents, items, reason, created_at FROM orders";

fn database() -> Result<Connection, Response> {
    Connection::open(DATABASE).map_err(|err| database_failed(format!("cannot open: {err}")))
}

/// Stores the order `pending`. The order and its items are one row, so one statement writes
/// them atomically, with no transaction to hold open across calls.
fn insert_pending_order(
    db: &Connection,
    user_id: i64,
    total_cents: i64,
    items: Vec<OrderItem>,
) -> Result<Order, Response> {
    let items_json =
        serde_json::to_string(&items).map_err(|err| database_failed(format!("cannot encode the items: {err}")))?;
    let created_at = common::now_unix();
    let inserted = db
        .execute(
            "INSERT INTO orders (user_id, status, total_cents, items, created_at) \
             VALUES (?, 'pending', ?, ?, ?) RETURNING id",
            &[
                Value::Integer(user_id),
                Value::Integer(total_cents),
                Value::Text(items_json),
                Value::Integer(created_at),
            ],
        )
        .map_err(|err| database_failed(format!("cannot store the order: {err}")))?;
    let id = inserted
        .rows
        .first()
        .and_then(|row| row.get::<i64>(0))
        .ok_or_else(|| database_failed("the insert returned no id"))?;
    Ok(Order {
        id,
        user_id,
        status: "pending".to_string(),
        total_cents,
        items,
        reason: None,
        created_at,
    })
}

fn order_from_row(row: &spin_sdk::sqlite::RowResult) -> Result<Order, Response> {
    let corrupt = || database_failed("an order row does not have the expected columns");
    let id = row.get::<i64>(0).ok_or_else(corrupt)?;
    let items_json = row.get::<&str>(4).ok_or_else(corrupt)?;
    let items = serde_json::from_str(items_json)
        .map_err(|err| database_failed(format!("order {id} has unreadable items: {err}")))?;
    Ok(Order {
        id,
        user_id: row.get::<i64>(1).ok_or_else(corrupt)?,
        status: row.get::<&str>(2).ok_or_else(corrupt)?.to_string(),
        total_cents: row.get::<i64>(3).ok_or_else(corrupt)?,
        items,
        reason: row.get::<&str>(5).map(str::to_string),
        created_at: row.get::<i64>(6).ok_or_else(corrupt)?,
    })
}

// ---- answers ----

fn invalid(detail: impl std::fmt::Display) -> Response {
    common::error(400, "invalid request", detail)
}

fn database_failed(detail: impl std::fmt::Display) -> Response {
    common::error(503, "service unavailable", format!("database `{DATABASE}`: {detail}"))
}

fn unavailable(service: &str, detail: impl std::fmt::Display) -> StepFailure {
    StepFailure {
        status: 503,
        error: "service unavailable",
        reason: format!("{service}: {detail}"),
    }
}
