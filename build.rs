//! Compiles the protobuf contract in `proto/` into Rust types at build time.
//!
//! `protox` parses the .proto files in pure Rust, so no `protoc` binary is needed on the
//! machine that builds Colony.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Only the client and the gateway speak protobuf; an embedded store compiles none.
    #[cfg(feature = "client")]
    compile_protos()?;
    Ok(())
}

#[cfg(feature = "client")]
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/colony/v1/colony.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The descriptors themselves too, for reflection: the shared test vectors are checked
    // against the canonical JSON of the contract with them (tests/vectors.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("colony.v1.descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
