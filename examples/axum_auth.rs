//! Limiting by the authenticated user: an authentication middleware puts `Claims` in the
//! request's extensions, and `LightRateLayer` reads the user from them.
//!
//! ```text
//! cargo run --example axum_auth
//! curl -H 'authorization: Bearer token-of-alice' localhost:3000/me
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

use std::io::Write as _;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use lightrate::tower::{Identify, LightRateLayer, MissingIdentifier};
use lightrate::{EmbeddedSource, Limiter, RuleSet};

/// What authentication established about the caller.
#[derive(Clone, Debug)]
pub struct Claims {
    pub subject: String,
}

/// A stand-in for real authentication: `Authorization: Bearer token-of-<name>`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let subject = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer token-of-"))
        .map(str::to_owned);
    match subject {
        Some(subject) => {
            request.extensions_mut().insert(Claims { subject });
            next.run(request).await
        }
        None => (StatusCode::UNAUTHORIZED, "who are you?").into_response(),
    }
}

/// The routes, limited per authenticated user.
pub fn app(limiter: Limiter) -> Router {
    let rate_limit = LightRateLayer::new(limiter)
        .identify(Identify::extension(|claims: &Claims| {
            claims.subject.as_str()
        }))
        // Authentication runs first, so there is always a subject; be strict if not.
        .on_missing_identifier(MissingIdentifier::Reject);
    Router::new()
        .route(
            "/me",
            get(|Extension(claims): Extension<Claims>| async move {
                format!("you are {}", claims.subject)
            }),
        )
        // Layers added later run first: authentication, then the rate limiter.
        .layer(rate_limit)
        .layer(middleware::from_fn(authenticate))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    axum::serve(listener, app(limiter)).await
}
