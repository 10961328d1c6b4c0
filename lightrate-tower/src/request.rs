//! [`TowerRequest`]: how a tower request (its head, `http::request::Parts`) shows itself to
//! the request policy; and [`WholeRequest`], the same for a whole request, which the default
//! configuration's path reads without splitting it into head and body.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use lightrate_core::web::adapter::{ReadExtension, RequestView};

/// The request policy's view of a tower request: its head. Names the framework in
/// [`Identify`](crate::Identify).
#[derive(Clone, Copy, Debug)]
pub struct TowerRequest;

/// The request policy's view of a whole tower request, for
/// [`RequestPolicy::plan_simple`](lightrate_core::web::adapter::RequestPolicy::plan_simple): the same
/// reads as [`TowerRequest`]'s, on `http::Request<B>`.
pub(crate) struct WholeRequest<B>(PhantomData<fn() -> B>);

/// What the views read of a request: its head, whole or in a request.
trait Head {
    fn method(&self) -> &Method;
    fn uri(&self) -> &Uri;
    fn headers(&self) -> &HeaderMap;
    fn extensions(&self) -> &Extensions;
    fn extensions_mut(&mut self) -> &mut Extensions;
}

impl Head for Parts {
    #[inline]
    fn method(&self) -> &Method {
        &self.method
    }

    #[inline]
    fn uri(&self) -> &Uri {
        &self.uri
    }

    #[inline]
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    #[inline]
    fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    #[inline]
    fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

impl<B> Head for Request<B> {
    #[inline]
    fn method(&self) -> &Method {
        self.method()
    }

    #[inline]
    fn uri(&self) -> &Uri {
        self.uri()
    }

    #[inline]
    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    #[inline]
    fn extensions(&self) -> &Extensions {
        self.extensions()
    }

    #[inline]
    fn extensions_mut(&mut self) -> &mut Extensions {
        self.extensions_mut()
    }
}

/// The views' reads, written once for both.
macro_rules! tower_view {
    ($view:ty, $request:ty $(, $body:ident)?) => {
        impl$(<$body: 'static>)? RequestView for $view {
            type Request = $request;
            type HeaderName = HeaderName;
            type Extensions = Extensions;

            #[inline]
            fn method(req: &$request) -> Option<Cow<'_, Method>> {
                Some(Cow::Borrowed(Head::method(req)))
            }

            #[inline]
            fn path(req: &$request) -> &str {
                req.uri().path()
            }

            /// axum's `MatchedPath`, where axum has routed the request.
            fn route_template<'r>(req: &'r $request, _path: &str) -> Option<Cow<'r, str>> {
                #[cfg(feature = "axum")]
                if let Some(matched) = Head::extensions(req).get::<axum::extract::MatchedPath>() {
                    return Some(Cow::Borrowed(matched.as_str()));
                }
                let _ = req;
                None
            }

            /// `content-type: application/grpc` (or `application/grpc+proto`, ...).
            fn is_grpc(req: &$request) -> bool {
                Head::headers(req)
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            }

            #[inline]
            fn header<'r>(req: &'r $request, name: &HeaderName) -> Option<&'r [u8]> {
                Head::headers(req).get(name).map(|v| v.as_bytes())
            }

            fn forwarded_for(req: &$request) -> impl Iterator<Item = &[u8]> {
                Head::headers(req)
                    .get_all("x-forwarded-for")
                    .into_iter()
                    .map(|v| v.as_bytes())
            }

            /// axum's `ConnectInfo<SocketAddr>`, else a `SocketAddr` extension.
            #[inline]
            fn peer_ip(req: &$request) -> Option<IpAddr> {
                let extensions = Head::extensions(req);
                #[cfg(feature = "axum")]
                if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
                    return Some(info.0.ip());
                }
                extensions.get::<SocketAddr>().map(SocketAddr::ip)
            }

            #[inline]
            fn with_extensions<O>(req: &$request, f: impl FnOnce(&Extensions) -> O) -> O {
                f(Head::extensions(req))
            }

            #[inline]
            fn contains<T: Send + Sync + 'static>(extensions: &Extensions) -> bool {
                extensions.get::<T>().is_some()
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
            fn insert_into<T: Clone + Send + Sync + 'static>(req: &mut $request, value: T) {
                Head::extensions_mut(req).insert(value);
            }

            #[inline]
            fn insert_new<T: Clone + Send + Sync + 'static>(req: &mut $request, value: T) -> bool {
                let mut inserted = false;
                Head::extensions_mut(req).get_or_insert_with(|| {
                    inserted = true;
                    value
                });
                inserted
            }

            #[inline]
            fn remove_from<T: Clone + Send + Sync + 'static>(req: &mut $request) {
                Head::extensions_mut(req).remove::<T>();
            }
        }
    };
}

tower_view!(TowerRequest, Parts);
tower_view!(WholeRequest<B>, Request<B>, B);

impl<T: Send + Sync + 'static> ReadExtension<T> for TowerRequest {
    #[inline]
    fn get(extensions: &Extensions) -> Option<&T> {
        extensions.get::<T>()
    }
}
