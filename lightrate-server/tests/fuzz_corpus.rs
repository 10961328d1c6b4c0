//! The server's fuzz corpus (`fuzz/corpus/server_request/`), replayed through the target's
//! body as an ordinary test: every request the fuzzer kept, on the stable toolchain.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

#[test]
fn every_corpus_request_gets_an_answer_the_protocol_allows() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/server_request");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome =
            std::panic::catch_unwind(|| lightrate_server::fuzzing::consume_request(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        inputs += 1;
    }
    assert!(inputs >= 8, "the corpus has {inputs} inputs");
}
