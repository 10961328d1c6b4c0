//! [`IpText`]: a client's address written as text on the stack, for identifiers taken from
//! the peer address (the web adapters) and compared by the limiter's memos.

use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

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

impl fmt::Debug for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IpText").field(&self.as_str()).finish()
    }
}
