//! Why a component did not answer a request, what the client is told (a 5xx without the
//! host's internals) and how a wasmtime error is classified.

use std::time::Duration;

use http::StatusCode;

use super::HttpResponse;
use crate::instance::DeadlineExceeded;
use crate::trigger::body::json_error;

/// Why a component did not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `trap`: the trap code alone (what a client may see); `detail`: with the wasm backtrace
    /// (for the log only: it shows the guest's internals).
    #[error("component `{component}` trapped: {detail}")]
    Trap {
        component: String,
        trap: Option<String>,
        detail: String,
    },
    #[error("component `{component}` exceeded the request deadline of {timeout:?}")]
    Deadline { component: String, timeout: Duration },
    #[error("component `{component}` could not be instantiated: {detail}")]
    Instantiate { component: String, detail: String },
    /// `code`: the `wasi:http` error code the guest returned, as WIT names it.
    #[error("component `{component}` returned the error code {code} instead of a response")]
    Guest { component: String, code: String },
    #[error("component `{component}` finished without sending a response")]
    NoResponse { component: String },
    #[error(
        "component `{component}` is already serving {limit} requests, its limit \
         (http.max_in_flight_per_component in mosaic.toml); try again shortly"
    )]
    Busy { component: String, limit: u32 },
}

impl ServeError {
    pub fn into_response(self) -> HttpResponse {
        let (status, error) = self.answer();
        json_error(status, error, self.client_detail())
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.answer().0
    }

    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ServeError::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "component trapped"),
            ServeError::Deadline { .. } => (StatusCode::GATEWAY_TIMEOUT, "deadline exceeded"),
            ServeError::Instantiate { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no instance available"),
            ServeError::Guest { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "component error"),
            ServeError::NoResponse { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "no response"),
            ServeError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "component busy"),
        }
    }

    /// What the client is told: the reason without the host's internals (backtraces, paths),
    /// which go to the log line of the failed request.
    fn client_detail(&self) -> String {
        match self {
            ServeError::Trap { component, trap, .. } => format!(
                "component `{component}` trapped: {} (the host log has the details)",
                trap.as_deref().unwrap_or("the component failed")
            ),
            ServeError::Instantiate { component, .. } => {
                format!("component `{component}` could not be instantiated (the host log has the details)")
            }
            other => other.to_string(),
        }
    }
}

pub fn classify(component: &str, instantiating: bool, err: wasmtime::Error, timeout: Duration) -> ServeError {
    let component = component.to_string();
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return ServeError::Deadline { component, timeout };
    }
    if instantiating && err.downcast_ref::<wasmtime::Trap>().is_none() {
        return ServeError::Instantiate {
            component,
            detail: format!("{err:#}"),
        };
    }
    let trap = err.downcast_ref::<wasmtime::Trap>().map(|trap| trap.to_string());
    let detail = match &trap {
        Some(trap) => format!("{trap}: {err:#}"),
        None => format!("{err:#}"),
    };
    ServeError::Trap {
        component,
        trap,
        detail,
    }
}
