//! User identifiers taken from requests: the limit, the check, and the client's address.

use std::fmt;
use std::net::IpAddr;

/// The longest user identifier accepted from a request, in bytes.
pub const MAX_REQUEST_IDENTIFIER_BYTES: usize = 256;

/// Why a user identifier was refused (the request gets 400, before any token is spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidIdentifier {
    /// Empty, or only white space.
    Empty,
    /// Longer than [`MAX_REQUEST_IDENTIFIER_BYTES`].
    TooLong,
    /// Not UTF-8, or contains control characters.
    NotVisible,
}

impl fmt::Display for InvalidIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidIdentifier::Empty => f.write_str("the user identifier is empty"),
            InvalidIdentifier::TooLong => write!(
                f,
                "the user identifier is longer than {MAX_REQUEST_IDENTIFIER_BYTES} bytes"
            ),
            InvalidIdentifier::NotVisible => {
                f.write_str("the user identifier must be UTF-8 text without control characters")
            }
        }
    }
}

impl std::error::Error for InvalidIdentifier {}

/// Checks a user identifier taken from a request: not empty or blank, at most
/// [`MAX_REQUEST_IDENTIFIER_BYTES`], UTF-8 without control characters.
pub(crate) fn validate_identifier(raw: &[u8]) -> Result<&str, InvalidIdentifier> {
    if raw.len() > MAX_REQUEST_IDENTIFIER_BYTES {
        return Err(InvalidIdentifier::TooLong);
    }
    let text = std::str::from_utf8(raw).map_err(|_| InvalidIdentifier::NotVisible)?;
    if text.chars().any(char::is_control) {
        return Err(InvalidIdentifier::NotVisible);
    }
    if text.trim().is_empty() {
        return Err(InvalidIdentifier::Empty);
    }
    Ok(text)
}

/// The client's address: the peer, or, behind `trusted_proxies` reverse proxies that append
/// to `X-Forwarded-For` (whose values are `forwarded_for`, in order), the address the
/// outermost of them saw. Forwarded headers are never read when `trusted_proxies` is 0 (the
/// default), because any client can send them.
pub(crate) fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    trusted_proxies: usize,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    if hops.is_empty() {
        return peer;
    }
    // The last `trusted_proxies` entries were written by our proxies; the outermost of them
    // wrote the address it received from.
    let at = hops.len().saturating_sub(trusted_proxies);
    hops[at].parse().ok().or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::IpText;
    use http::HeaderMap;

    #[test]
    fn identifiers_are_checked_at_the_edges() {
        assert_eq!(validate_identifier(b"user-42"), Ok("user-42"));
        assert_eq!(validate_identifier(b"  "), Err(InvalidIdentifier::Empty));
        assert_eq!(
            validate_identifier(&[b'a'; MAX_REQUEST_IDENTIFIER_BYTES + 1]),
            Err(InvalidIdentifier::TooLong)
        );
        assert_eq!(
            validate_identifier(b"a\x07b"),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(
            validate_identifier(&[0xff, 0xfe]),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(validate_identifier(&[b'a'; 256]).map(str::len), Ok(256));
        assert_eq!(
            validate_identifier(&[b'a'; 257]),
            Err(InvalidIdentifier::TooLong)
        );
        assert_eq!(validate_identifier(b""), Err(InvalidIdentifier::Empty));
        assert_eq!(
            validate_identifier(b"a\tb"),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(
            validate_identifier(b"a\x7fb"),
            Err(InvalidIdentifier::NotVisible)
        );
        assert_eq!(validate_identifier("Zoë 🦀".as_bytes()), Ok("Zoë 🦀"));
        assert_eq!(
            validate_identifier("\u{85}x".as_bytes()),
            Err(InvalidIdentifier::NotVisible)
        );
    }

    #[test]
    fn the_message_states_the_limit() {
        assert_eq!(
            InvalidIdentifier::TooLong.to_string(),
            "the user identifier is longer than 256 bytes"
        );
    }

    #[test]
    fn ip_addresses_are_written_as_std_writes_them() {
        assert_eq!(
            IpText::new("192.0.2.7".parse().unwrap()).as_str(),
            "192.0.2.7"
        );
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.10",
            "::1",
            "2001:db8::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    fn forwarded(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
        headers
            .get_all("x-forwarded-for")
            .into_iter()
            .map(|v| v.as_bytes())
    }

    #[test]
    fn forwarded_for_is_read_only_behind_trusted_proxies() {
        let peer: Option<IpAddr> = "10.0.0.9".parse().ok();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(peer, forwarded(&h), 2), peer);
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(client_ip(peer, forwarded(&h), 0), peer);
        assert_eq!(client_ip(peer, forwarded(&h), 1), "3.3.3.3".parse().ok());
        assert_eq!(client_ip(peer, forwarded(&h), 2), "2.2.2.2".parse().ok());
        assert_eq!(client_ip(peer, forwarded(&h), 9), "1.1.1.1".parse().ok());
        let mut garbage = HeaderMap::new();
        garbage.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(client_ip(peer, forwarded(&garbage), 1), peer);

        // What a client claimed is not what the trusted proxy saw.
        let peer = "10.0.0.2".parse().ok();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        assert_eq!(client_ip(peer, forwarded(&headers), 0), peer);
        assert_eq!(
            client_ip(peer, forwarded(&headers), 1),
            "203.0.113.7".parse().ok()
        );
    }
}
