//! The fuzz corpora (`fuzz/corpus/<target>/`), replayed through the targets' bodies as an
//! ordinary test: every input the fuzzer kept, and every crash it found and we fixed, runs on
//! the stable toolchain with no fuzzer.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::path::Path;

use lightrate_testing::fuzzing::TARGETS;

#[test]
fn every_corpus_input_passes_its_target() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in TARGETS {
        let folder = corpora.join(name);
        let mut inputs = 0;
        for entry in
            std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", path.display());
            inputs += 1;
        }
        println!("{name}: {inputs} inputs");
        assert!(inputs > 0, "{name}: the corpus is empty");
    }
}
