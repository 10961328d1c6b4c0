//! The default connection cap, from the process's limit on open file descriptors.
//!
//! Read from `/proc/self/limits` (Linux): no `unsafe`, no dependency. Elsewhere, or when the
//! file cannot be read, the limit is taken to be 256 (macOS's default soft limit, the smallest
//! common one); `--max-connections` overrides it.

/// The limit assumed when it cannot be read.
const ASSUMED_DESCRIPTOR_LIMIT: u64 = 256;

/// The default cap never goes past this, whatever the descriptor limit (memory is then the
/// limit: tens of KiB per connection).
const MAX_DEFAULT_CONNECTIONS: u64 = 65_536;

/// The default cap on concurrent connections ([`ServerConfig::max_connections`](crate::ServerConfig::max_connections)): the descriptor limit less what the process needs
/// besides (the listener, Redis connections, a refused connection being answered, logs): an
/// eighth of the limit, at least 32. 1024 descriptors give 896 connections.
pub fn default_max_connections() -> usize {
    let limit = descriptor_limit().unwrap_or(ASSUMED_DESCRIPTOR_LIMIT);
    connections_for(limit)
}

fn connections_for(limit: u64) -> usize {
    let reserve = (limit / 8).max(32);
    let cap = limit
        .saturating_sub(reserve)
        .clamp(1, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(cap).unwrap_or(1)
}

/// The soft limit on open files, if the system says.
fn descriptor_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_limits(&text)
}

/// The soft limit of the "Max open files" line; `unlimited` is [`u64::MAX`].
fn parse_limits(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_limit_on_open_files() {
        let text = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 1048576              files
Max locked memory         8388608              8388608              bytes";
        assert_eq!(parse_limits(text), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files";
        assert_eq!(parse_limits(unlimited), Some(u64::MAX));
        assert_eq!(parse_limits("nothing here"), None);
    }

    #[test]
    fn the_cap_leaves_room_for_what_else_the_process_opens() {
        assert_eq!(connections_for(1024), 896);
        assert_eq!(connections_for(256), 224);
        assert_eq!(connections_for(64), 32);
        assert_eq!(connections_for(16), 1);
        assert_eq!(connections_for(u64::MAX), 65_536);
        assert!(default_max_connections() >= 1);
    }
}
