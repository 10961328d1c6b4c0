//! User identifiers taken from requests: the limit, the check, and the client's address.

use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::limiter::UserProbe;

/// The longest user identifier accepted from a request, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Why a user identifier was refused (the request gets 400, before any token is spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidIdentifier {
    /// Empty, or only white space.
    Empty,
    /// Longer than [`MAX_IDENTIFIER_BYTES`].
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
                "the user identifier is longer than {MAX_IDENTIFIER_BYTES} bytes"
            ),
            InvalidIdentifier::NotVisible => {
                f.write_str("the user identifier must be UTF-8 text without control characters")
            }
        }
    }
}

impl std::error::Error for InvalidIdentifier {}

/// Checks a user identifier taken from a request: not empty or blank, at most
/// [`MAX_IDENTIFIER_BYTES`], UTF-8 without control characters.
pub(crate) fn validate_identifier(raw: &[u8]) -> Result<&str, InvalidIdentifier> {
    if raw.len() > MAX_IDENTIFIER_BYTES {
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

/// An IP address written out on the stack, so that identifying a user by address allocates
/// nothing. IPv4 (what most clients have) skips `fmt`, which costs more than a whole local
/// decision: each octet is copied from a table, and the text is checked as UTF-8 with its
/// buffer, in 16-byte blocks that `str::from_utf8` checks a word at a time instead of byte by
/// byte.
#[derive(Clone, Copy)]
pub(crate) struct IpText {
    buf: TextBuf,
    len: usize,
}

/// The bytes of an [`IpText`]: room for the longest IPv6 text (45 bytes), in whole 16-byte
/// blocks, aligned as `str::from_utf8` reads them a word at a time. Unused bytes stay 0.
#[derive(Clone, Copy)]
#[repr(align(16))]
struct TextBuf([u8; 48]);

/// Each octet in decimal followed by a dot, padded to four bytes with zeros, and how many of
/// those bytes count (digits and the dot).
static OCTETS: [([u8; 4], u8); 256] = octet_table();

const fn octet_table() -> [([u8; 4], u8); 256] {
    let mut table = [([0; 4], 0); 256];
    let mut octet = 0;
    while octet < 256 {
        // Three decimal digits at most: each fits in a byte.
        let (hundreds, tens, ones) = (
            (octet / 100) as u8,
            (octet / 10 % 10) as u8,
            (octet % 10) as u8,
        );
        table[octet] = if octet >= 100 {
            ([b'0' + hundreds, b'0' + tens, b'0' + ones, b'.'], 4)
        } else if octet >= 10 {
            ([b'0' + tens, b'0' + ones, b'.', 0], 3)
        } else {
            ([b'0' + ones, b'.', 0, 0], 2)
        };
        octet += 1;
    }
    table
}

impl IpText {
    /// No text yet.
    pub(crate) const EMPTY: IpText = IpText {
        buf: TextBuf([0; 48]),
        len: 0,
    };

    /// The address as text.
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut text = IpText::EMPTY;
        text.write(ip);
        text
    }

    /// Writes `ip` (on an empty text: as written over `EMPTY`).
    #[inline(always)]
    pub(crate) fn write(&mut self, ip: IpAddr) {
        let text = self;
        match ip {
            IpAddr::V4(v4) => {
                let mut at = 0;
                for octet in v4.octets() {
                    let (bytes, len) = OCTETS[usize::from(octet)];
                    // At most 12 bytes were written before the last octet: the mask changes
                    // nothing, and spares the bounds check.
                    let at4 = at & 15;
                    text.buf.0[at4..at4 + 4].copy_from_slice(&bytes);
                    at += usize::from(len);
                }
                // Without the dot after the last octet.
                text.len = at - 1;
            }
            IpAddr::V6(_) => {
                let _ = write!(text, "{ip}");
            }
        }
    }

    /// The text's bytes (ASCII), unchecked: what the limiter's hot path compares and hashes.
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.0.get(..self.len).unwrap_or_default()
    }

    /// The text.
    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        // Whole blocks are checked (the bytes after the text are 0), then cut to the text: one
        // block for IPv4.
        let (checked, _) = self.buf.0.split_at(if self.len <= 16 { 16 } else { 48 });
        match std::str::from_utf8(checked) {
            Ok(text) => text.get(..self.len).unwrap_or_default(),
            Err(_) => "",
        }
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.0.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A client's address as the limiter's hot path takes it: compared as an address with the
/// memo of its user, written as text only where the text is needed (the maps, the source).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpProbe(pub(crate) IpAddr);

impl UserProbe for IpProbe {
    #[inline]
    fn is(&self, _: &[u8], ip: Option<IpAddr>) -> bool {
        ip == Some(self.0)
    }

    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(IpText::new(self.0).as_bytes())
    }
}

impl fmt::Debug for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IpText").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn identifiers_are_checked_at_the_edges() {
        assert_eq!(validate_identifier(b"user-42"), Ok("user-42"));
        assert_eq!(validate_identifier(b"  "), Err(InvalidIdentifier::Empty));
        assert_eq!(
            validate_identifier(&[b'a'; MAX_IDENTIFIER_BYTES + 1]),
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
