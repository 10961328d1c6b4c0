//! [`Identify`] and [`MissingIdentifier`]: who a request is charged to.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::view::{ReadExtension, RequestView};

pub(crate) type ExtensionFn<V> =
    dyn for<'a> Fn(&'a <V as RequestView>::Extensions) -> Option<&'a str> + Send + Sync;
type WithFn<V> =
    dyn for<'a> Fn(&'a <V as RequestView>::Request) -> Option<Cow<'a, str>> + Send + Sync;

/// Where the user identifier of a request comes from. Each adapter names it for its
/// framework's request (`lightrate::tower::Identify`, `lightrate::actix::Identify`).
///
/// ```
/// use http::HeaderName;
/// use lightrate::tower::Identify;
///
/// /// What an authentication layer put in the request's extensions.
/// #[derive(Clone)]
/// struct Claims { subject: String }
///
/// let by_header = Identify::header(HeaderName::from_static("x-user-id"));
/// let by_auth = Identify::extension(|claims: &Claims| claims.subject.as_str());
/// let by_address = Identify::peer_ip();
/// let by_anything = Identify::with(|parts| parts.uri.query().map(Into::into));
/// ```
///
/// An identifier that is empty, longer than
/// [`MAX_REQUEST_IDENTIFIER_BYTES`](super::MAX_REQUEST_IDENTIFIER_BYTES), or not visible text gets 400 before
/// any token is spent; a request without one follows [`MissingIdentifier`].
pub struct Identify<V: RequestView>(Kind<V>);

pub(crate) enum Kind<V: RequestView> {
    Header(V::HeaderName),
    PeerIp,
    Extension(Arc<ExtensionFn<V>>),
    With(Arc<WithFn<V>>),
}

impl<V: RequestView> Clone for Identify<V> {
    fn clone(&self) -> Self {
        Identify(match &self.0 {
            Kind::Header(name) => Kind::Header(name.clone()),
            Kind::PeerIp => Kind::PeerIp,
            Kind::Extension(get) => Kind::Extension(get.clone()),
            Kind::With(f) => Kind::With(f.clone()),
        })
    }
}

impl<V: RequestView> fmt::Debug for Identify<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Header(name) => write!(f, "Identify::header({name})"),
            Kind::PeerIp => f.write_str("Identify::peer_ip()"),
            Kind::Extension(_) => f.write_str("Identify::extension(..)"),
            Kind::With(_) => f.write_str("Identify::with(..)"),
        }
    }
}

impl<V: RequestView> Identify<V> {
    /// The value of a request header (for example `x-user-id`, or an API-key header).
    pub fn header(name: V::HeaderName) -> Self {
        Identify(Kind::Header(name))
    }

    /// The client's IP address, as the framework knows the peer (axum's `ConnectInfo`, a
    /// `SocketAddr` extension, actix-web's `peer_addr`); `X-Forwarded-For` only behind
    /// trusted proxies (`trust_forwarded_for`). The default.
    pub fn peer_ip() -> Self {
        Identify(Kind::PeerIp)
    }

    /// A value an earlier layer or middleware (authentication) put in the request's
    /// extensions. Borrowed for the duration of the check: it costs no allocation.
    pub fn extension<T: 'static>(get: fn(&T) -> &str) -> Self
    where
        V: ReadExtension<T>,
    {
        fn erase<V: RequestView>(
            f: impl for<'a> Fn(&'a V::Extensions) -> Option<&'a str> + Send + Sync + 'static,
        ) -> Arc<ExtensionFn<V>> {
            Arc::new(f)
        }
        Identify(Kind::Extension(erase::<V>(move |extensions| {
            V::get(extensions).map(get)
        })))
    }

    /// Anything computed from the request. Borrow from it when you can: a borrowed identifier
    /// costs no allocation.
    pub fn with(
        f: impl for<'a> Fn(&'a V::Request) -> Option<Cow<'a, str>> + Send + Sync + 'static,
    ) -> Self {
        Identify(Kind::With(Arc::new(f)))
    }

    pub(crate) fn kind(&self) -> &Kind<V> {
        &self.0
    }
}

/// What to do with a request that carries no user identifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MissingIdentifier {
    /// Limit it by the client's IP address. The default: anonymous clients are still limited
    /// (letting them through would make omitting the identifier a way around the limit), and
    /// endpoints that work without one keep working.
    #[default]
    PeerIp,
    /// Let it through without limiting it.
    Unlimited,
    /// Answer 400 without calling the handler.
    Reject,
}
