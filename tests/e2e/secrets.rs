//! The API key in logs: never. A key too short to be a secret is warned about once, at
//! start-up, by its length alone.

use lightrate::LightRateClient;

use crate::support::logs;

#[test]
fn a_short_key_is_warned_about_without_being_logged() {
    logs::init();
    let before = logs::count("is shorter than 16 bytes");
    let _client = LightRateClient::builder("k3y", "app").build().unwrap();
    assert_eq!(logs::count("is shorter than 16 bytes"), before + 1);
    assert!(logs::contains("key_bytes=3"));
    assert!(!logs::contains("k3y"));
    // A real-looking key: no warning.
    let _client = LightRateClient::builder("sk_live_0123456789abcdef", "app")
        .build()
        .unwrap();
    assert_eq!(logs::count("is shorter than 16 bytes"), before + 1);
}
