//! The inventory service: the stock of every product and the reservations orders make against
//! it, on its SQLite database `inventory`.
//!
//! A reservation takes every item or none, and is made once per order: a repeat answers the
//! reservation already made. A release gives the stock back exactly once.
//!
//! Stock is a ledger of movements (migrations/inventory/0001_init.sql): a product's stock is the
//! sum of its movements, and every write (set, reserve, release) is ONE `INSERT ... SELECT`
//! whose conditions are checked by the statement itself. SQLite runs a statement as one
//! transaction that holds the write lock from its start, so a write is all-or-nothing and
//! serialised against every other: concurrent reservations cannot sell what is not there, and
//! no transaction is held open across calls (and across the calls of other requests).

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, Value};

const SERVICE: &str = "inventory";
const DATABASE: &str = "inventory";

#[derive(Debug, Clone, Serialize)]
struct Item {
    product_id: i64,
    quantity: i64,
}

#[derive(Debug, Serialize)]
struct Reservation {
    order_id: i64,
    status: String,
    items: Vec<Item>,
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
        (Method::Get, ["inventory", product_id]) => match common::id(product_id, "product") {
            Ok(product_id) => get_stock(product_id),
            Err(answer) => answer,
        },
        (Method::Put, ["inventory", product_id]) => match common::id(product_id, "product") {
            Ok(product_id) => set_stock(req, product_id),
            Err(answer) => answer,
        },
        (Method::Post, ["reservations"]) => reserve(req),
        (Method::Post, ["reservations", order_id, "release"]) => match common::id(order_id, "reservation for order") {
            Ok(order_id) => release(order_id),
            Err(answer) => answer,
        },
        (_, ["health"] | ["inventory", _] | ["reservations"] | ["reservations", _, "release"]) => {
            common::method_not_allowed(req)
        }
        _ => common::not_found(format!("no route {}", req.path())),
    }
}

fn database_failed(err: impl std::fmt::Display) -> Response {
    common::upstream_failed("inventory database", err)
}

fn invalid(detail: impl std::fmt::Display) -> Response {
    common::error(400, "invalid request", detail)
}

fn stock_answer(product_id: i64, available: i64) -> Response {
    common::json(200, &json!({ "product_id": product_id, "available": available }))
}

fn get_stock(product_id: i64) -> Response {
    match database().and_then(|db| available_stock(&db, product_id)) {
        Ok(available) => stock_answer(product_id, available),
        Err(answer) => answer,
    }
}

fn set_stock(req: &Request, product_id: i64) -> Response {
    let fields = match fields_of(req) {
        Ok(fields) => fields,
        Err(answer) => return answer,
    };
    let quantity = match fields.get("quantity").map(Json::as_i64) {
        None => return invalid("`quantity` is required"),
        Some(Some(quantity)) if quantity >= 0 => quantity,
        Some(_) => return invalid("`quantity` must be an integer >= 0"),
    };
    // The movement is the difference to the new level, computed in the same statement.
    let stored = database().and_then(|db| {
        db.execute(
            "INSERT INTO movements (product_id, delta, kind, created_at) \
             SELECT ?1, ?2 - COALESCE(SUM(delta), 0), 'set', ?3 FROM movements WHERE product_id = ?1",
            &[
                Value::Integer(product_id),
                Value::Integer(quantity),
                Value::Integer(common::now_unix()),
            ],
        )
        .map_err(database_failed)
    });
    match stored {
        Ok(_) => stock_answer(product_id, quantity),
        Err(answer) => answer,
    }
}

/// Takes every item of the order, or none: one INSERT of the order's `reserve` movements that
/// inserts nothing if the order has movements already or if any item is short.
const RESERVE: &str = "\
    WITH wanted (product_id, quantity) AS ( \
        SELECT json_extract(value, '$.product_id'), json_extract(value, '$.quantity') FROM json_each(?2)) \
    INSERT INTO movements (product_id, delta, kind, order_id, created_at) \
    SELECT product_id, -quantity, 'reserve', ?1, ?3 FROM wanted \
    WHERE NOT EXISTS (SELECT 1 FROM movements WHERE order_id = ?1) \
      AND NOT EXISTS ( \
          SELECT 1 FROM wanted AS short WHERE short.quantity > \
              (SELECT COALESCE(SUM(delta), 0) FROM movements WHERE movements.product_id = short.product_id)) \
    RETURNING product_id";

/// Gives an order's reserved stock back, once: one INSERT of the opposite movements that
/// inserts nothing if the order was released already (or never reserved).
const RELEASE: &str = "\
    INSERT INTO movements (product_id, delta, kind, order_id, created_at) \
    SELECT product_id, -delta, 'release', order_id, ?2 FROM movements \
    WHERE order_id = ?1 AND kind = 'reserve' \
      AND NOT EXISTS (SELECT 1 FROM movements WHERE order_id = ?1 AND kind = 'release')";

/// How often a reservation is tried when it took nothing yet no item turned out short (stock
/// came back in between, from a release): the answer must name the short product.
const RESERVE_ATTEMPTS: usize = 3;

fn reserve(req: &Request) -> Response {
    let (order_id, items) = match reservation_request(req) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    match database().and_then(|db| reserve_items(&db, order_id, &items)) {
        Ok(answer) | Err(answer) => answer,
    }
}

fn reserve_items(db: &Connection, order_id: i64, items: &[Item]) -> Result<Response, Response> {
    let wanted =
        serde_json::to_string(items).map_err(|err| database_failed(format!("cannot encode the items: {err}")))?;
    for _ in 0..RESERVE_ATTEMPTS {
        let taken = db
            .execute(
                RESERVE,
                &[
                    Value::Integer(order_id),
                    Value::Text(wanted.clone()),
                    Value::Integer(common::now_unix()),
                ],
            )
            .map_err(database_failed)?;
        if !taken.rows.is_empty() {
            let reservation = Reservation {
                order_id,
                status: "reserved".into(),
                items: items.to_vec(),
            };
            return Ok(common::json(201, &reservation));
        }
        // Nothing was taken: the order has its reservation already, or some item is short.
        if let Some(existing) = load_reservation(db, order_id)? {
            return Ok(common::json(200, &existing));
        }
        for item in items {
            let available = available_stock(db, item.product_id)?;
            if available < item.quantity {
                return Ok(common::json(
                    409,
                    &json!({
                        "error": "insufficient stock",
                        "detail": format!(
                            "product {}: {} requested, {available} available",
                            item.product_id, item.quantity
                        ),
                        "order_id": order_id,
                        "product_id": item.product_id,
                        "requested": item.quantity,
                        "available": available,
                    }),
                ));
            }
        }
    }
    Ok(common::error(
        409,
        "insufficient stock",
        format!("the stock for order {order_id} kept changing while reserving: try again"),
    ))
}

fn release(order_id: i64) -> Response {
    let released = database().and_then(|db| {
        db.execute(RELEASE, &[Value::Integer(order_id), Value::Integer(common::now_unix())])
            .map_err(database_failed)?;
        load_reservation(&db, order_id)
    });
    match released {
        Ok(Some(_)) => common::json(200, &json!({ "order_id": order_id, "status": "released" })),
        Ok(None) => common::not_found(format!("no reservation for order {order_id}")),
        Err(answer) => answer,
    }
}

fn database() -> Result<Connection, Response> {
    Connection::open(DATABASE).map_err(database_failed)
}

/// A product's available stock: the sum of its movements (0 for a product nobody stocked).
fn available_stock(db: &Connection, product_id: i64) -> Result<i64, Response> {
    let result = db
        .execute(
            "SELECT COALESCE(SUM(delta), 0) FROM movements WHERE product_id = ?",
            &[Value::Integer(product_id)],
        )
        .map_err(database_failed)?;
    result
        .rows
        .first()
        .and_then(|row| row.get::<i64>(0))
        .ok_or_else(|| database_failed("the stock sum has an unexpected shape"))
}

/// The order's reservation as its movements tell it, if it has one.
fn load_reservation(db: &Connection, order_id: i64) -> Result<Option<Reservation>, Response> {
    let result = db
        .execute(
            "SELECT product_id, delta, kind FROM movements WHERE order_id = ? ORDER BY id",
            &[Value::Integer(order_id)],
        )
        .map_err(database_failed)?;
    if result.rows.is_empty() {
        return Ok(None);
    }
    let mut items = Vec::new();
    let mut released = false;
    for row in &result.rows {
        let (Some(product_id), Some(delta), Some(kind)) = (row.get::<i64>(0), row.get::<i64>(1), row.get::<&str>(2))
        else {
            return Err(database_failed("a movement has an unexpected shape"));
        };
        match kind {
            "reserve" => items.push(Item {
                product_id,
                quantity: -delta,
            }),
            _ => released = true,
        }
    }
    Ok(Some(Reservation {
        order_id,
        status: if released { "released" } else { "reserved" }.into(),
        items,
    }))
}

/// The order id and the items of a reservation request, the same product asked twice merged
/// into one item, or a 400 naming the field at fault.
fn reservation_request(req: &Request) -> Result<(i64, Vec<Item>), Response> {
    let fields = fields_of(req)?;
    let order_id = match fields.get("order_id").map(Json::as_i64) {
        None => return Err(invalid("`order_id` is required")),
        Some(Some(order_id)) => order_id,
        Some(None) => return Err(invalid("`order_id` must be an integer")),
    };
    let listed = match fields.get("items") {
        None => return Err(invalid("`items` is required")),
        Some(Json::Array(listed)) if !listed.is_empty() => listed,
        Some(_) => return Err(invalid("`items` must be a non-empty array")),
    };
    let mut items: Vec<Item> = Vec::with_capacity(listed.len());
    for (index, entry) in listed.iter().enumerate() {
        let field = |name: &str| entry.get(name).and_then(Json::as_i64);
        let Some(product_id) = field("product_id") else {
            return Err(invalid(format!("`items[{index}].product_id` must be an integer")));
        };
        let Some(quantity) = field("quantity").filter(|quantity| *quantity >= 1) else {
            return Err(invalid(format!("`items[{index}].quantity` must be an integer >= 1")));
        };
        match items.iter_mut().find(|item| item.product_id == product_id) {
            Some(item) => {
                item.quantity = item
                    .quantity
                    .checked_add(quantity)
                    .ok_or_else(|| invalid(format!("`items[{index}].quantity` is too large")))?;
            }
            None => items.push(Item { product_id, quantity }),
        }
    }
    Ok((order_id, items))
}

/// The request body as a JSON object, or a 400.
fn fields_of(req: &Request) -> Result<Map<String, Json>, Response> {
    match common::body::<Json>(req)? {
        Json::Object(fields) => Ok(fields),
        _ => Err(invalid("the body must be a JSON object")),
    }
}
