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
//!
//! Built with spin-sdk 7 (WASI 0.3, spin:sqlite@3.1.0: the rows of a statement come as a
//! stream), while most of the shop stays on spin-sdk 5.2: an application moves one component at
//! a time. Its HTTP contract and its database are those of the spin-sdk 5.2 version.

use common7::Reply;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use shared::{error, not_found};
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;
use spin_sdk::sqlite::{Connection, RowResult, Value};

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

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(common7::respond(route(req).await.unwrap_or_else(|answer| answer)))
}

/// The answer to `req`, or the error answer that replaces it.
async fn route(req: Request) -> Result<Reply, Reply> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments = shared::segments(&path);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Ok(common7::health(SERVICE, DATABASE).await),
        (&Method::GET, ["inventory", product_id]) => get_stock(shared::id(product_id, "product")?).await,
        (&Method::PUT, ["inventory", product_id]) => {
            let product_id = shared::id(product_id, "product")?;
            set_stock(req, product_id).await
        }
        (&Method::POST, ["reservations"]) => reserve(req).await,
        (&Method::POST, ["reservations", order_id, "release"]) => {
            release(shared::id(order_id, "reservation for order")?).await
        }
        (_, ["health"] | ["inventory", _] | ["reservations"] | ["reservations", _, "release"]) => {
            Ok(shared::method_not_allowed(&method, &path))
        }
        _ => Ok(not_found(format!("no route {path}"))),
    }
}

fn database_failed(err: impl std::fmt::Debug) -> Reply {
    shared::upstream_failed("inventory database", format!("{err:?}"))
}

fn invalid(detail: impl std::fmt::Display) -> Reply {
    error(400, "invalid request", detail)
}

fn stock_answer(product_id: i64, available: i64) -> Reply {
    shared::json(200, &json!({ "product_id": product_id, "available": available }))
}

async fn get_stock(product_id: i64) -> Result<Reply, Reply> {
    let available = available_stock(&database().await?, product_id).await?;
    Ok(stock_answer(product_id, available))
}

async fn set_stock(req: Request, product_id: i64) -> Result<Reply, Reply> {
    let fields = fields_of(req).await?;
    let quantity = match fields.get("quantity").map(Json::as_i64) {
        None => return Err(invalid("`quantity` is required")),
        Some(Some(quantity)) if quantity >= 0 => quantity,
        Some(_) => return Err(invalid("`quantity` must be an integer >= 0")),
    };
    // The movement is the difference to the new level, computed in the same statement.
    rows(
        &database().await?,
        "INSERT INTO movements (product_id, delta, kind, created_at) \
         SELECT ?1, ?2 - COALESCE(SUM(delta), 0), 'set', ?3 FROM movements WHERE product_id = ?1",
        [
            Value::Integer(product_id),
            Value::Integer(quantity),
            Value::Integer(shared::now_unix()),
        ],
    )
    .await?;
    Ok(stock_answer(product_id, quantity))
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

async fn reserve(req: Request) -> Result<Reply, Reply> {
    let (order_id, items) = reservation_request(req).await?;
    reserve_items(&database().await?, order_id, &items).await
}

async fn reserve_items(db: &Connection, order_id: i64, items: &[Item]) -> Result<Reply, Reply> {
    let wanted =
        serde_json::to_string(items).map_err(|err| database_failed(format!("cannot encode the items: {err}")))?;
    for _ in 0..RESERVE_ATTEMPTS {
        let taken = rows(
            db,
            RESERVE,
            [
                Value::Integer(order_id),
                Value::Text(wanted.clone()),
                Value::Integer(shared::now_unix()),
            ],
        )
        .await?;
        if !taken.is_empty() {
            let reservation = Reservation {
                order_id,
                status: "reserved".into(),
                items: items.to_vec(),
            };
            return Ok(shared::json(201, &reservation));
        }
        // Nothing was taken: the order has its reservation already, or some item is short.
        if let Some(existing) = load_reservation(db, order_id).await? {
            return Ok(shared::json(200, &existing));
        }
        for item in items {
            let available = available_stock(db, item.product_id).await?;
            if available < item.quantity {
                return Ok(shared::json(
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
    Ok(error(
        409,
        "insufficient stock",
        format!("the stock for order {order_id} kept changing while reserving: try again"),
    ))
}

async fn release(order_id: i64) -> Result<Reply, Reply> {
    let db = database().await?;
    rows(
        &db,
        RELEASE,
        [Value::Integer(order_id), Value::Integer(shared::now_unix())],
    )
    .await?;
    Ok(match load_reservation(&db, order_id).await? {
        Some(_) => shared::json(200, &json!({ "order_id": order_id, "status": "released" })),
        None => not_found(format!("no reservation for order {order_id}")),
    })
}

async fn database() -> Result<Connection, Reply> {
    Connection::open(DATABASE).await.map_err(database_failed)
}

/// Runs `statement` and reads every row it answers; an error also if the stream of rows
/// broke off.
async fn rows<const N: usize>(
    db: &Connection,
    statement: &str,
    parameters: [Value; N],
) -> Result<Vec<RowResult>, Reply> {
    let result = db.execute(statement, parameters).await.map_err(database_failed)?;
    result.collect().await.map_err(database_failed)
}

/// A product's available stock: the sum of its movements (0 for a product nobody stocked).
async fn available_stock(db: &Connection, product_id: i64) -> Result<i64, Reply> {
    let result = rows(
        db,
        "SELECT COALESCE(SUM(delta), 0) FROM movements WHERE product_id = ?",
        [Value::Integer(product_id)],
    )
    .await?;
    result
        .first()
        .and_then(|row| row.get::<i64>(0))
        .ok_or_else(|| database_failed("the stock sum has an unexpected shape"))
}

/// The order's reservation as its movements tell it, if it has one.
async fn load_reservation(db: &Connection, order_id: i64) -> Result<Option<Reservation>, Reply> {
    let movements = rows(
        db,
        "SELECT product_id, delta, kind FROM movements WHERE order_id = ? ORDER BY id",
        [Value::Integer(order_id)],
    )
    .await?;
    if movements.is_empty() {
        return Ok(None);
    }
    let mut items = Vec::new();
    let mut released = false;
    for row in &movements {
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
async fn reservation_request(req: Request) -> Result<(i64, Vec<Item>), Reply> {
    let fields = fields_of(req).await?;
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
async fn fields_of(req: Request) -> Result<Map<String, Json>, Reply> {
    match common7::body::<Json>(req).await? {
        Json::Object(fields) => Ok(fields),
        _ => Err(invalid("the body must be a JSON object")),
    }
}
