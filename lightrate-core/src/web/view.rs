//! [`RequestView`]: how an adapter shows its framework's request to the
//! [`RequestPolicy`](super::RequestPolicy). What an adapter implements, besides its
//! framework's `Layer`/`Transform`, `Service` and future.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use http::Method;

/// How an adapter shows a request of its framework to the policy: the few things the policy
/// reads (method, path, route, a header, the peer address, extensions), each as the framework
/// has it, without copying.
///
/// Implemented by a marker type of each adapter crate (the request type itself belongs to the
/// framework). The methods are called at most once per request each, and only when the
/// policy's options need what they return.
pub trait RequestView: Sized + 'static {
    /// The request as the middleware holds it when it plans: `http::request::Parts` (tower),
    /// `ServiceRequest` (actix-web).
    type Request;
    /// The framework's header name, for [`Identify::header`](super::Identify::header).
    type HeaderName: Clone + fmt::Display + Send + Sync + 'static;
    /// The framework's request extensions.
    type Extensions;

    /// Whether the policy may skip the lookup of a request's route template when its path
    /// cannot be at a template with a declared operation (by the templates' literal parts).
    /// Right when [`path`](Self::path) is the whole path the framework routes on and the
    /// lookup costs (actix-web: a walk of the resource map and a `String`); wrong where a
    /// nested router shows a path with its prefix stripped (axum).
    const PREFILTER_TEMPLATES: bool = false;

    /// The request's method in the `http` crate's type: `None` only for a method it refuses.
    fn method(req: &Self::Request) -> Option<Cow<'_, Method>>;

    /// The path the framework routes on.
    fn path(req: &Self::Request) -> &str;

    /// The template of the route the request reaches (`/items/{id}`), if known. `path` is
    /// [`path`](Self::path)'s answer.
    fn route_template<'r>(req: &'r Self::Request, path: &str) -> Option<Cow<'r, str>>;

    /// The name of the route the request reaches, where routes have names (actix-web's named
    /// resources). `path` is [`path`](Self::path)'s answer.
    fn route_name<'r>(req: &'r Self::Request, path: &str) -> Option<&'r str> {
        let _ = (req, path);
        None
    }

    /// Whether the request is a gRPC call (`content-type: application/grpc...`): its
    /// refusals are then gRPC statuses. Asked only to refuse a request. Default: never.
    fn is_grpc(req: &Self::Request) -> bool {
        let _ = req;
        false
    }

    /// The first value of the header `name`.
    fn header<'r>(req: &'r Self::Request, name: &Self::HeaderName) -> Option<&'r [u8]>;

    /// Every value of `X-Forwarded-For`, in order (read only behind trusted proxies).
    fn forwarded_for(req: &Self::Request) -> impl Iterator<Item = &[u8]>;

    /// The peer's IP address, when served over a socket.
    fn peer_ip(req: &Self::Request) -> Option<IpAddr>;

    /// Calls `f` with the request's extensions.
    fn with_extensions<O>(req: &Self::Request, f: impl FnOnce(&Self::Extensions) -> O) -> O;

    /// Whether `extensions` hold a `T`.
    fn contains<T: Send + Sync + 'static>(extensions: &Self::Extensions) -> bool;

    /// The `T` in `extensions`, if any.
    fn extension<T: Send + Sync + 'static>(extensions: &Self::Extensions) -> Option<&T>;

    /// Puts `value` in `extensions`.
    fn insert<T: Clone + Send + Sync + 'static>(extensions: &mut Self::Extensions, value: T);

    /// Puts `value` in the request's extensions.
    fn insert_into<T: Clone + Send + Sync + 'static>(req: &mut Self::Request, value: T);

    /// Puts `value` in the request's extensions unless they hold a `T` already: whether it
    /// did.
    fn insert_new<T: Clone + Send + Sync + 'static>(req: &mut Self::Request, value: T) -> bool;

    /// Takes the `T` out of the request's extensions.
    fn remove_from<T: Clone + Send + Sync + 'static>(req: &mut Self::Request);
}

/// Reads a `T` from the request's extensions, for
/// [`Identify::extension`](super::Identify::extension): implemented by an adapter for the
/// types its framework's extensions can hold.
pub trait ReadExtension<T>: RequestView {
    /// The `T` in `extensions`, if any.
    fn get(extensions: &Self::Extensions) -> Option<&T>;
}
