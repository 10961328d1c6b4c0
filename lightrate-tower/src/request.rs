//! [`TowerRequest`]: how a tower request (its head, `http::request::Parts`) shows itself to
//! the request policy.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::{Extensions, HeaderName, Method};
use lightrate_core::web::{ReadExtension, RequestView};

/// The request policy's view of a tower request: its head. Names the framework in
/// [`Identify`](crate::Identify).
#[derive(Clone, Copy, Debug)]
#[doc(hidden)]
pub struct TowerRequest;

impl RequestView for TowerRequest {
    type Request = Parts;
    type HeaderName = HeaderName;
    type Extensions = Extensions;

    #[inline]
    fn method(req: &Parts) -> Option<Cow<'_, Method>> {
        Some(Cow::Borrowed(&req.method))
    }

    #[inline]
    fn path(req: &Parts) -> &str {
        req.uri.path()
    }

    /// axum's `MatchedPath`, where axum has routed the request.
    fn route_template<'r>(req: &'r Parts, _path: &str) -> Option<Cow<'r, str>> {
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions.get::<axum::extract::MatchedPath>() {
            return Some(Cow::Borrowed(matched.as_str()));
        }
        let _ = req;
        None
    }

    /// `content-type: application/grpc` (or `application/grpc+proto`, ...).
    fn is_grpc(req: &Parts) -> bool {
        req.headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    #[inline]
    fn header<'r>(req: &'r Parts, name: &HeaderName) -> Option<&'r [u8]> {
        req.headers.get(name).map(|v| v.as_bytes())
    }

    fn forwarded_for(req: &Parts) -> impl Iterator<Item = &[u8]> {
        req.headers
            .get_all("x-forwarded-for")
            .into_iter()
            .map(|v| v.as_bytes())
    }

    /// axum's `ConnectInfo<SocketAddr>`, else a `SocketAddr` extension.
    #[inline]
    fn peer_ip(req: &Parts) -> Option<IpAddr> {
        #[cfg(feature = "axum")]
        if let Some(info) = req
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0.ip());
        }
        req.extensions.get::<SocketAddr>().map(SocketAddr::ip)
    }

    #[inline]
    fn with_extensions<O>(req: &Parts, f: impl FnOnce(&Extensions) -> O) -> O {
        f(&req.extensions)
    }

    #[inline]
    fn contains<T: Send + Sync + 'static>(extensions: &Extensions) -> bool {
        extensions.get::<T>().is_some()
    }

    #[inline]
    fn insert<T: Clone + Send + Sync + 'static>(extensions: &mut Extensions, value: T) {
        extensions.insert(value);
    }

    #[inline]
    fn insert_into<T: Clone + Send + Sync + 'static>(req: &mut Parts, value: T) {
        req.extensions.insert(value);
    }
}

impl<T: Send + Sync + 'static> ReadExtension<T> for TowerRequest {
    #[inline]
    fn get(extensions: &Extensions) -> Option<&T> {
        extensions.get::<T>()
    }
}
