//! [`ActixRequest`]: how an actix-web `ServiceRequest` shows itself to the request policy.

use std::borrow::Cow;
use std::net::IpAddr;

use actix_web::dev::{Extensions, ServiceRequest};
use actix_web::http::header::HeaderName;
use actix_web::HttpMessage;
use http::Method;
use lightrate_core::web::adapter::{ReadExtension, RequestView};

use crate::convert::http_method;

/// The request policy's view of an actix-web request. Names the framework in
/// [`Identify`](crate::Identify).
#[derive(Clone, Copy, Debug)]
pub struct ActixRequest;

impl RequestView for ActixRequest {
    type Request = ServiceRequest;
    type HeaderName = HeaderName;
    type Extensions = Extensions;

    /// Finding a request's resource pattern costs actix a walk of its resource map and a
    /// `String`; the path shown is the whole one actix routes on.
    const PREFILTER_TEMPLATES: bool = true;

    #[inline]
    fn method(req: &ServiceRequest) -> Option<Cow<'_, Method>> {
        http_method(req.method()).map(Cow::Owned)
    }

    /// The path as actix routes it: percent-decoded (`/em%61ils` reaches `/emails`).
    #[inline]
    fn path(req: &ServiceRequest) -> &str {
        req.match_info().as_str()
    }

    /// The pattern of the resource the request reaches (`/items/{id}`). Before routing has
    /// reached the resource (app-wide or scope-level middleware), actix finds it from the
    /// path; it routes on the percent-decoded path, so that is the one to look up.
    fn route_template<'r>(req: &'r ServiceRequest, path: &str) -> Option<Cow<'r, str>> {
        let pattern = if path == req.path() {
            req.match_pattern()
        } else {
            req.resource_map().match_pattern(path)
        };
        pattern.map(Cow::Owned)
    }

    /// The name of the resource the request reaches, found as its pattern is.
    fn route_name<'r>(req: &'r ServiceRequest, path: &str) -> Option<&'r str> {
        if path == req.path() {
            req.match_name()
        } else {
            req.resource_map().match_name(path)
        }
    }

    #[inline]
    fn header<'r>(req: &'r ServiceRequest, name: &HeaderName) -> Option<&'r [u8]> {
        req.headers().get(name).map(|v| v.as_bytes())
    }

    fn forwarded_for(req: &ServiceRequest) -> impl Iterator<Item = &[u8]> {
        req.headers()
            .get_all("x-forwarded-for")
            .map(|v| v.as_bytes())
    }

    #[inline]
    fn peer_ip(req: &ServiceRequest) -> Option<IpAddr> {
        req.peer_addr().map(|a| a.ip())
    }

    #[inline]
    fn with_extensions<O>(req: &ServiceRequest, f: impl FnOnce(&Extensions) -> O) -> O {
        f(&req.extensions())
    }

    #[inline]
    fn contains<T: Send + Sync + 'static>(extensions: &Extensions) -> bool {
        extensions.contains::<T>()
    }

    #[inline]
    fn extension<T: Send + Sync + 'static>(extensions: &Extensions) -> Option<&T> {
        extensions.get::<T>()
    }

    #[inline]
    fn insert<T: Clone + Send + Sync + 'static>(extensions: &mut Extensions, value: T) {
        extensions.insert(value);
    }

    #[inline]
    fn insert_into<T: Clone + Send + Sync + 'static>(req: &mut ServiceRequest, value: T) {
        req.extensions_mut().insert(value);
    }

    #[inline]
    fn insert_new<T: Clone + Send + Sync + 'static>(req: &mut ServiceRequest, value: T) -> bool {
        let mut inserted = false;
        req.extensions_mut().get_or_insert_with(|| {
            inserted = true;
            value
        });
        inserted
    }

    #[inline]
    fn remove_from<T: Clone + Send + Sync + 'static>(req: &mut ServiceRequest) {
        req.extensions_mut().remove::<T>();
    }
}

/// Actix's extensions hold any `'static` value (`req.extensions_mut().insert(claims)`, what
/// `web::ReqData` reads).
impl<T: 'static> ReadExtension<T> for ActixRequest {
    #[inline]
    fn get(extensions: &Extensions) -> Option<&T> {
        extensions.get::<T>()
    }
}
