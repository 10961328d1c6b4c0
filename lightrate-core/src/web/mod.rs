//! What every web adapter shares, on the `http` crate's types: the request policy (every
//! option of `lightrate::tower::LightRateLayer` and `lightrate::actix::LightRate`, and what a
//! request gets), identifier validation, per-route operations, the choice of target, and the
//! answers (429, 503, 400) with their headers, shadow mode, and the gRPC form of the answers.
//!
//! An adapter is only glue between its framework and this module: its layer (or transform),
//! its service, its future, and a [`RequestView`](adapter::RequestView) of its framework's
//! request: [`adapter`] says how.
//!
//! | file | what it holds |
//! |---|---|
//! | `identifier.rs` | [`MAX_REQUEST_IDENTIFIER_BYTES`], [`InvalidIdentifier`], validation, the client's address |
//! | `identify.rs` | [`Identify`], [`MissingIdentifier`]: who a request is charged to |
//! | `operations.rs` | [`Operation`], [`PathTarget`], the declared route operations, the target |
//! | `rejection.rs` | [`Rejection`], [`RateLimitHeaders`]: the answers and the IETF fields |
//! | `shadow.rs` | [`Mode`]: enforce, or only count (shadow mode), and shadow mode's log |
//! | `view.rs` | [`RequestView`](adapter::RequestView): how an adapter shows its request |
//! | `policy.rs` | [`RequestPolicy`](adapter::RequestPolicy): the options, and what it derives from them |
//! | `plan.rs` | [`Plan`](adapter::Plan): what a request gets, up to asking the limiter |
//! | `answer.rs` | the verdict of a check, the IETF fields, the refusals, shadow mode's let-through |
//! | `stage.rs` | [`Stage`](adapter::Stage): the states of every adapter's response future |
//! | `options.rs` | the adapters' builder methods, written once |

mod answer;
mod family;
mod identifier;
mod identify;
mod limits;
mod operations;
mod options;
mod plan;
mod policy;
mod rejection;
mod response;
mod route_limit;
mod shadow;
mod stage;
mod view;

pub use identifier::{InvalidIdentifier, MAX_REQUEST_IDENTIFIER_BYTES};
pub use identify::{Identify, MissingIdentifier};
pub use operations::{Operation, PathTarget};
pub use rejection::{RateLimitHeaders, Rejection};
pub use response::{ResponseHead, Used};
pub use route_limit::RouteLimit;
pub use shadow::Mode;

pub mod adapter {
    //! What an adapter crate builds on: everything `lightrate-tower` and `lightrate-actix` use,
    //! and all a third adapter needs. Applications do not need this module.
    //!
    //! An adapter is glue between its framework and this module, in four parts:
    //!
    //! 1. **A view of its request**: a zero-sized type implementing [`RequestView`] that shows the
    //!    policy the framework's request (its method, path, headers, extensions, peer address,
    //!    route template). [`ReadExtension`] reads the extensions an authentication layer set.
    //! 2. **Its layer** (or transform): holds an `Arc<`[`RequestPolicy`]`<View>>` and gets every
    //!    builder method, written once, from [`request_policy_options!`](crate::request_policy_options),
    //!    which changes the options through [`RequestPolicy::configure`].
    //! 3. **Its service**: for each request, [`RequestPolicy::plan`] (or
    //!    [`plan_simple`](RequestPolicy::plan_simple) when [`is_simple`](RequestPolicy::is_simple))
    //!    says what to do: [`Plan::Call`] the inner service, answer [`Plan::Refused`], or await the
    //!    [`Check`] of the token source, whose [`Verdict`] either refuses or is [`Allowed`] (which
    //!    marks the request decided by this middleware, so that it does not decide it again,
    //!    while another LightRate middleware joins the decision).
    //! 4. **Its response future**: wraps a [`Stage`], which runs those steps and yields the inner
    //!    service's response (with the IETF fields to add) or the ready answer.
    //!
    //! The answers are `http::Response<`[`AnswerBody`]`>`; the adapter turns them into its
    //! framework's response type.

    pub use super::plan::{After, Allowed, Check, Plan, Verdict};
    pub use super::policy::{Options, RequestPolicy};
    pub use super::stage::Stage;
    pub use super::view::{ReadExtension, RequestView};

    /// The body of the answers the policy makes (and a `respond_with` closure returns).
    pub type AnswerBody = bytes::Bytes;
}

/// Entry points for the fuzz targets (`lightrate-testing`'s `fuzzing` module): the web layer's
/// parsers and writers of untrusted input, not an API for applications.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::IpAddr;
    use std::time::Duration;

    use http::HeaderMap;

    use super::InvalidIdentifier;
    use crate::limiter::{Decision, DecisionSource, RuleSummary};
    use crate::RefillRate;

    /// The check of a user identifier taken from a request.
    pub fn validate_identifier(raw: &[u8]) -> Result<&str, InvalidIdentifier> {
        super::identifier::validate_identifier(raw)
    }

    /// The client's address from the peer and `X-Forwarded-For` values.
    pub fn client_ip(
        peer: Option<IpAddr>,
        forwarded_for: &[&[u8]],
        trusted_proxies: usize,
    ) -> Option<IpAddr> {
        super::identifier::client_ip(peer, forwarded_for.iter().copied(), trusted_proxies)
    }

    /// An IP address as the identify step writes it.
    pub fn ip_text(ip: IpAddr) -> String {
        crate::ip::IpText::new(ip).as_str().to_owned()
    }

    /// The IETF `RateLimit-Policy` and `RateLimit` fields written for a decision on a rule of
    /// `burst` and `refill`: allowed with `remaining` left, or denied for `retry_after`.
    pub fn rate_limit_headers(
        policy: &str,
        burst: u64,
        refill: RefillRate,
        remaining: u64,
        allowed: bool,
        retry_after: Duration,
    ) -> HeaderMap {
        let rule = RuleSummary {
            slot: 0,
            burst_rate: burst,
            refill_rate: refill,
            is_default: false,
        };
        let decision = if allowed {
            Decision::local(remaining, 0, rule, 0)
        } else {
            Decision::denied(DecisionSource::TokenSource, retry_after, remaining, rule)
        };
        let mut headers = HeaderMap::new();
        super::rejection::write_rate_limit_headers(&mut headers, &decision, policy);
        headers
    }
}
