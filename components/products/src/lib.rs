//! The products service: the catalogue (create, list, read, update) on its SQLite database
//! `products`, with reads going through the key-value store `products-cache`.
//!
//! Cache entries are `product:{id}` and `products:list`, each stored as
//! `{"cached_at": unix_seconds, "value": ...}` and treated as a miss once older than five
//! minutes. Every write deletes the entries it affects. A cache that fails never fails a
//! request: the database answers instead.
//!
//! The cache holds products in their database shape, never an answer: each build renders what
//! it reads (the `v2` build adds `"currency":"EUR"`), so v1 and v2 can share one store while one
//! is swapped for the other without either serving the other's shape.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};

const SERVICE: &str = "products";
const DATABASE: &str = "products";
const CACHE_STORE: &str = "products-cache";
const LIST_KEY: &str = "products:list";
const CACHE_TTL_SECONDS: i64 = 300;
const COLUMNS: &str = "id, name, description, price_cents, updated_at";

/// A product as the database holds it (and as the cache keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    description: Option<String>,
    price_cents: i64,
    updated_at: i64,
}

/// A product as this build answers it.
fn render(product: &Product) -> Json {
    let mut answer = serde_json::to_value(product).unwrap_or(Json::Null);
    if cfg!(feature = "v2") {
        if let Some(fields) = answer.as_object_mut() {
            fields.insert("currency".into(), Json::from("EUR"));
        }
    }
    answer
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
        // A bad build for the canary walkthrough (README): healthy, but every answer a 500.
        _ if cfg!(feature = "broken") => common::error(500, "internal error", "a bug in this build"),
        (Method::Get, ["products"]) => list_products(),
        (Method::Post, ["products"]) => create_product(req),
        (Method::Get, ["products", id]) => match common::id(id, "product") {
            Ok(id) => get_product(id),
            Err(answer) => answer,
        },
        (Method::Put, ["products", id]) => match common::id(id, "product") {
            Ok(id) => update_product(req, id),
            Err(answer) => answer,
        },
        (_, ["health"] | ["products"] | ["products", _]) => common::method_not_allowed(req),
        _ => common::not_found(format!("no route {}", req.path())),
    }
}

fn product_key(id: i64) -> String {
    format!("product:{id}")
}

fn database_failed(err: impl std::fmt::Display) -> Response {
    common::upstream_failed("products database", err)
}

fn list_products() -> Response {
    let cache = Cache::open();
    let products = match cache.get::<Vec<Product>>(LIST_KEY) {
        Some(products) => products,
        None => match query_products(&format!("SELECT {COLUMNS} FROM products ORDER BY id"), &[]) {
            Ok(products) => {
                cache.put(LIST_KEY, &products);
                products
            }
            Err(answer) => return answer,
        },
    };
    common::json(200, &products.iter().map(render).collect::<Vec<_>>())
}

fn get_product(id: i64) -> Response {
    let cache = Cache::open();
    let key = product_key(id);
    if let Some(product) = cache.get::<Product>(&key) {
        return common::json(200, &render(&product));
    }
    let found = query_products(
        &format!("SELECT {COLUMNS} FROM products WHERE id = ?"),
        &[Value::Integer(id)],
    );
    match found.map(|products| products.into_iter().next()) {
        Ok(Some(product)) => {
            cache.put(&key, &product);
            common::json(200, &render(&product))
        }
        Ok(None) => common::not_found(format!("no product with id {id}")),
        Err(answer) => answer,
    }
}

fn create_product(req: &Request) -> Response {
    let fields = match fields_of(req) {
        Ok(fields) => fields,
        Err(answer) => return answer,
    };
    let changes = match Changes::from_fields(&fields) {
        Ok(changes) => changes,
        Err(answer) => return answer,
    };
    let Some(name) = changes.name else {
        return common::error(400, "invalid request", "`name` is required");
    };
    let Some(price_cents) = changes.price_cents else {
        return common::error(400, "invalid request", "`price_cents` is required");
    };
    let description = changes.description.flatten();
    let created = query_products(
        &format!(
            "INSERT INTO products (name, description, price_cents, updated_at) VALUES (?, ?, ?, ?) RETURNING {COLUMNS}"
        ),
        &[
            Value::Text(name),
            description.map_or(Value::Null, Value::Text),
            Value::Integer(price_cents),
            Value::Integer(common::now_unix()),
        ],
    );
    match created.map(|products| products.into_iter().next()) {
        Ok(Some(product)) => {
            Cache::open().forget(&[&product_key(product.id), LIST_KEY]);
            common::json(201, &render(&product))
        }
        Ok(None) => database_failed("the insert returned no row"),
        Err(answer) => answer,
    }
}

fn update_product(req: &Request, id: i64) -> Response {
    let fields = match fields_of(req) {
        Ok(fields) => fields,
        Err(answer) => return answer,
    };
    let changes = match Changes::from_fields(&fields) {
        Ok(changes) => changes,
        Err(answer) => return answer,
    };
    // One statement setting only the given columns (fixed names; values are bound), so two
    // updates of different fields cannot undo each other.
    let mut assignments = Vec::new();
    let mut parameters = Vec::new();
    if let Some(name) = changes.name {
        assignments.push("name = ?");
        parameters.push(Value::Text(name));
    }
    if let Some(description) = changes.description {
        assignments.push("description = ?");
        parameters.push(description.map_or(Value::Null, Value::Text));
    }
    if let Some(price_cents) = changes.price_cents {
        assignments.push("price_cents = ?");
        parameters.push(Value::Integer(price_cents));
    }
    if assignments.is_empty() {
        return common::error(
            400,
            "invalid request",
            "the body needs at least one of `name`, `description`, `price_cents`",
        );
    }
    assignments.push("updated_at = ?");
    parameters.push(Value::Integer(common::now_unix()));
    parameters.push(Value::Integer(id));
    let statement = format!(
        "UPDATE products SET {} WHERE id = ? RETURNING {COLUMNS}",
        assignments.join(", ")
    );
    match query_products(&statement, &parameters).map(|products| products.into_iter().next()) {
        Ok(Some(product)) => {
            Cache::open().forget(&[&product_key(id), LIST_KEY]);
            common::json(200, &render(&product))
        }
        Ok(None) => common::not_found(format!("no product with id {id}")),
        Err(answer) => answer,
    }
}

/// The fields a create or update asks for; `description: Some(None)` clears it.
struct Changes {
    name: Option<String>,
    description: Option<Option<String>>,
    price_cents: Option<i64>,
}

impl Changes {
    fn from_fields(fields: &Map<String, Json>) -> Result<Self, Response> {
        let invalid = |detail: &str| common::error(400, "invalid request", detail);
        let name = match fields.get("name") {
            None => None,
            Some(Json::String(name)) if !name.trim().is_empty() => Some(name.clone()),
            Some(_) => return Err(invalid("`name` must be a non-empty string")),
        };
        let description = match fields.get("description") {
            None => None,
            Some(Json::Null) => Some(None),
            Some(Json::String(description)) => Some(Some(description.clone())),
            Some(_) => return Err(invalid("`description` must be a string")),
        };
        let price_cents = match fields.get("price_cents") {
            None => None,
            Some(price) => match price.as_i64() {
                Some(cents) if cents >= 0 => Some(cents),
                _ => return Err(invalid("`price_cents` must be an integer >= 0")),
            },
        };
        Ok(Self {
            name,
            description,
            price_cents,
        })
    }
}

/// The request body as a JSON object, or a 400.
fn fields_of(req: &Request) -> Result<Map<String, Json>, Response> {
    match common::body::<Json>(req)? {
        Json::Object(fields) => Ok(fields),
        _ => Err(common::error(400, "invalid request", "the body must be a JSON object")),
    }
}

/// Runs a statement whose rows are products (columns in the order of `COLUMNS`).
fn query_products(statement: &str, parameters: &[Value]) -> Result<Vec<Product>, Response> {
    let connection = Connection::open(DATABASE).map_err(database_failed)?;
    let result = connection.execute(statement, parameters).map_err(database_failed)?;
    result
        .rows
        .iter()
        .map(|row| {
            Some(Product {
                id: row.get::<i64>(0)?,
                name: row.get::<&str>(1)?.to_string(),
                description: row.get::<&str>(2).map(str::to_string),
                price_cents: row.get::<i64>(3)?,
                updated_at: row.get::<i64>(4)?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| database_failed("a product row has an unexpected shape"))
}

/// What a cache entry holds beside its value: when it was stored.
#[derive(Serialize, Deserialize)]
struct CacheEntry<T> {
    cached_at: i64,
    value: T,
}

/// The read cache; every failure of the store is logged and treated as a miss.
struct Cache(Option<Store>);

impl Cache {
    fn open() -> Self {
        match Store::open(CACHE_STORE) {
            Ok(store) => Self(Some(store)),
            Err(err) => {
                eprintln!("products: cache `{CACHE_STORE}` unavailable: {err}");
                Self(None)
            }
        }
    }

    /// The value under `key` if it is there, readable and at most five minutes old.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = match self.0.as_ref()?.get(key) {
            Ok(bytes) => bytes?,
            Err(err) => {
                eprintln!("products: cache read of `{key}` failed: {err}");
                return None;
            }
        };
        // An entry this build cannot read (another shape) is a miss, not an error.
        let entry: CacheEntry<T> = serde_json::from_slice(&bytes).ok()?;
        let age = common::now_unix() - entry.cached_at;
        (0..=CACHE_TTL_SECONDS).contains(&age).then_some(entry.value)
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) {
        let Some(store) = &self.0 else { return };
        let entry = CacheEntry {
            cached_at: common::now_unix(),
            value,
        };
        let stored = serde_json::to_vec(&entry)
            .map_err(|err| err.to_string())
            .and_then(|bytes| store.set(key, &bytes).map_err(|err| err.to_string()));
        if let Err(err) = stored {
            eprintln!("products: cache write of `{key}` failed: {err}");
        }
    }

    fn forget(&self, keys: &[&str]) {
        let Some(store) = &self.0 else { return };
        for key in keys {
            if let Err(err) = store.delete(key) {
                eprintln!("products: cache delete of `{key}` failed (stale for up to {CACHE_TTL_SECONDS} s): {err}");
            }
        }
    }
}
