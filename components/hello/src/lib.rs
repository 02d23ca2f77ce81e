//! `GET /hello/NAME` greets NAME; `GET /hello/health` is the health route the deploy probe
//! calls. The answer names the component version (the crate version), so a swap is visible.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path_info = req
        .header("spin-path-info")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let name = path_info.trim_matches('/');
    let response = match name {
        "health" => Response::new(200, "ok"),
        "" => Response::new(
            200,
            format!("Hello from Mosaic (hello {})\n", env!("CARGO_PKG_VERSION")),
        ),
        name => Response::new(200, format!("Hello, {name}! (hello {})\n", env!("CARGO_PKG_VERSION"))),
    };
    Ok(response)
}
