//! Fuzzes everything the gateway does with a client's bytes before storage: frame decoding,
//! protobuf decoding, conversion, validation, authorization and the round trip of accepted
//! transactions. Run: `cargo fuzz run untrusted_bytes` from `fuzz/`.

#![no_main]

use colony::gateway::untrusted::inspect;
use colony::model::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small maximum frame so the fuzzer reaches the "too large" path often.
    let _ = inspect(data, 4096, &Limits::default());
});
