//! The users service (docs/reference-app.md, "users"): accounts in the `users` database with
//! an argon2id password hash, and authentication that answers an HS256 token for the gateway to
//! verify. Private: reached in-process by the gateway and orders. No answer carries the hash.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, Error as SqlError, QueryResult, Value};

const SERVICE: &str = "users";
const DATABASE: &str = "users";
const MIN_PASSWORD_CHARS: usize = 8;
const DEFAULT_TOKEN_TTL_SECONDS: i64 = 3600;
const USER_COLUMNS: &str = "id, email, name, created_at";

/// A user as every answer shows it: never with the password hash.
#[derive(Serialize)]
struct User {
    id: i64,
    email: String,
    name: String,
    /// Unix seconds, like every timestamp of the application.
    created_at: i64,
}

/// An answer, or the error answer that replaces it.
type Answer = Result<Response, Response>;

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let segments = common::segments(&req);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let answer = match (req.method(), segments.as_slice()) {
        (Method::Get, ["health"]) => Ok(common::health(SERVICE, DATABASE)),
        (Method::Post, ["users"]) => register(&req),
        (Method::Get, ["users"]) => list(),
        (Method::Post, ["users", "authenticate"]) => authenticate(&req),
        // `authenticate` is a route, not a user id: another method on it is a 405.
        (_, ["users", "authenticate"]) => Ok(common::method_not_allowed(&req)),
        (Method::Get, ["users", id]) => show(id),
        (_, ["health"] | ["users"] | ["users", _]) => Ok(common::method_not_allowed(&req)),
        _ => Ok(common::not_found(format!("no route {} {}", req.method(), req.path()))),
    };
    Ok(answer.unwrap_or_else(|error| error))
}

/// `POST /users`: `{"email","password","name"}` → 201 user, 409 for a taken email.
fn register(req: &Request) -> Answer {
    let fields = json_object(req)?;
    let email = normalized_email(text_field(&fields, "email")?);
    if !is_valid_email(&email) {
        return Err(invalid("`email` must look like name@domain"));
    }
    let password = text_field(&fields, "password")?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(invalid(format!(
            "`password` needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let name = text_field(&fields, "name")?.trim();
    if name.is_empty() {
        return Err(invalid("`name` must not be empty"));
    }
    let password_hash = hash_password(password)?;
    let inserted = database()?.execute(
        &format!(
            "INSERT INTO users (email, name, password_hash, created_at) VALUES (?, ?, ?, ?) RETURNING {USER_COLUMNS}"
        ),
        &[
            Value::Text(email.clone()),
            Value::Text(name.to_string()),
            Value::Text(password_hash),
            Value::Integer(common::now_unix()),
        ],
    );
    match inserted {
        Ok(result) => {
            let user = users_of(&result)?
                .into_iter()
                .next()
                .ok_or_else(|| internal("the insert returned no row"))?;
            Ok(common::json(201, &user))
        }
        // The UNIQUE index on email decides, so two concurrent registrations cannot both win.
        Err(SqlError::Io(message)) if message.contains("UNIQUE constraint failed") => Err(common::error(
            409,
            "conflict",
            format!("the email `{email}` is already registered"),
        )),
        Err(err) => Err(database_failed(err)),
    }
}

/// `GET /users`: every user, by id.
fn list() -> Answer {
    let result = database()?
        .execute(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"), &[])
        .map_err(database_failed)?;
    Ok(common::json(200, &users_of(&result)?))
}

/// `GET /users/{id}`.
fn show(segment: &str) -> Answer {
    let id = common::id(segment, "user")?;
    let result = database()?
        .execute(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"),
            &[Value::Integer(id)],
        )
        .map_err(database_failed)?;
    match users_of(&result)?.into_iter().next() {
        Some(user) => Ok(common::json(200, &user)),
        None => Err(common::not_found(format!("no user with id `{id}`"))),
    }
}

/// `POST /users/authenticate`: `{"email","password"}` → 200 `{"token","expires_at","user"}`,
/// or the same 401 whether the email or the password is wrong.
fn authenticate(req: &Request) -> Answer {
    let fields = json_object(req)?;
    let email = normalized_email(text_field(&fields, "email")?);
    let password = text_field(&fields, "password")?;
    let result = database()?
        .execute(
            &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = ?"),
            &[Value::Text(email)],
        )
        .map_err(database_failed)?;
    let stored_hash = result.rows().next().and_then(|row| row.get::<&str>("password_hash"));
    let user = users_of(&result)?.into_iter().next();
    let (Some(user), Some(stored_hash)) = (user, stored_hash) else {
        // Spend the time a verification takes, so that the answer's delay does not tell
        // which emails are registered.
        let _ = hash_with_fixed_salt(password);
        return Err(wrong_credentials());
    };
    if !password_matches(password, stored_hash) {
        return Err(wrong_credentials());
    }
    let secret = spin_sdk::variables::get("jwt_secret")
        .map_err(|err| internal(format!("the variable `jwt_secret` is not readable: {err}")))?;
    let now = common::now_unix();
    let claims = common::jwt::Claims {
        sub: user.id.to_string(),
        iat: now,
        exp: now + token_ttl_seconds(),
    };
    let token = common::jwt::sign(&claims, &secret);
    Ok(common::json(
        200,
        &serde_json::json!({ "token": token, "expires_at": claims.exp, "user": user }),
    ))
}

/// The variable `token_ttl_seconds`, or the default for a missing or meaningless value.
fn token_ttl_seconds() -> i64 {
    spin_sdk::variables::get("token_ttl_seconds")
        .ok()
        .and_then(|value| value.trim().parse::<i64>().ok())
        .filter(|seconds| *seconds > 0)
        .unwrap_or(DEFAULT_TOKEN_TTL_SECONDS)
}

/// Argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT)
}

/// The PHC string of `password` with a fresh random salt.
fn hash_password(password: &str) -> Result<String, Response> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| internal(format!("no randomness for a salt: {err}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| internal(format!("cannot encode the salt: {err}")))?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| internal(format!("cannot hash the password: {err}")))
}

/// A hash as costly as a verification, for logins with an unknown email.
fn hash_with_fixed_salt(password: &str) -> Option<String> {
    let salt = SaltString::from_b64("bm90LWEtcmVhbC1zYWx0").ok()?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|hash| hash.to_string())
}

/// Whether `password` matches the stored PHC string (its own parameters and salt apply).
fn password_matches(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|hash| hasher().verify_password(password.as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

/// Emails are compared trimmed and lower-cased.
fn normalized_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// One `@`, with text on both sides.
fn is_valid_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !domain.contains('@'),
        None => false,
    }
}

fn json_object(req: &Request) -> Result<Map<String, Json>, Response> {
    match common::body::<Json>(req)? {
        Json::Object(fields) => Ok(fields),
        _ => Err(invalid("the body must be a JSON object")),
    }
}

fn text_field<'a>(fields: &'a Map<String, Json>, name: &str) -> Result<&'a str, Response> {
    match fields.get(name) {
        Some(Json::String(text)) => Ok(text),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        None => Err(invalid(format!("`{name}` is required"))),
    }
}

/// The users of a result selected with `USER_COLUMNS`.
fn users_of(result: &QueryResult) -> Result<Vec<User>, Response> {
    result
        .rows()
        .map(|row| {
            Some(User {
                id: row.get("id")?,
                email: row.get::<&str>("email")?.to_string(),
                name: row.get::<&str>("name")?.to_string(),
                created_at: row.get("created_at")?,
            })
        })
        .collect::<Option<Vec<User>>>()
        .ok_or_else(|| internal("a user row has an unexpected shape"))
}

fn database() -> Result<Connection, Response> {
    Connection::open(DATABASE).map_err(database_failed)
}

fn database_failed(err: SqlError) -> Response {
    common::upstream_failed("users database", err)
}

fn invalid(detail: impl std::fmt::Display) -> Response {
    common::error(400, "invalid request", detail)
}

fn internal(detail: impl std::fmt::Display) -> Response {
    common::error(500, "internal error", detail)
}

fn wrong_credentials() -> Response {
    common::error(401, "unauthorized", "wrong email or password")
}
