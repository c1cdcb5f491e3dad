//! Replays the fuzzer's saved corpus (`fuzz/corpus/untrusted_bytes/`) through the gateway's
//! handling of untrusted bytes, so every CI run on stable Rust covers what the fuzzer found.

use colony::gateway::untrusted::inspect;
use colony::model::Limits;

#[test]
fn the_saved_corpus_is_handled_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/untrusted_bytes");
    let mut files = 0;
    let mut frames = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("readable");
        frames += inspect(&data, 4096, &Limits::default()).frames;
        files += 1;
    }
    assert!(files >= 10, "corpus has only {files} inputs");
    assert!(frames > 0, "no corpus input holds a whole frame");
}
