//! What a handler and an adapter say of a response, for the limits settled at it: [`Used`],
//! [`ResponseHead`].

use http::HeaderMap;

/// What a handler puts in its response's extensions to say how many tokens its request used,
/// for a limit declared [`settled`](super::RouteLimit::settled): the reservation is settled at
/// it.
///
/// ```
/// use lightrate::tower::Used;
///
/// // In axum, a handler returns `(Extension(Used(120)), Json(...))`; by hand:
/// let mut response = http::Response::new(r#"{"usage": {"total_tokens": 120}}"#);
/// response.extensions_mut().insert(Used(120));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Used(pub u64);

/// The head of the inner service's response, as an adapter shows it to
/// [`After::finish`] and a [`settle_with`](super::RouteLimit::settle_with) closure reads it:
/// its status, its headers, and the [`Used`] its handler put in it.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    status: u16,
    headers: &'a HeaderMap,
    used: Option<Used>,
}

impl<'a> ResponseHead<'a> {
    /// The head of a response of `status` with `headers`, and the [`Used`] in its extensions.
    pub fn new(status: u16, headers: &'a HeaderMap, used: Option<Used>) -> Self {
        ResponseHead {
            status,
            headers,
            used,
        }
    }

    /// The response's status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The value of the header `name` (its first), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// What the handler said the request used.
    pub fn used(&self) -> Option<Used> {
        self.used
    }
}
