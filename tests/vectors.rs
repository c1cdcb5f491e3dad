//! The shared test vectors in `proto/testdata/vectors.json`, checked against the Rust side.
//!
//! The same file is read by the TypeScript and Python clients' suites, so the three stay
//! byte-compatible: every frame's bytes must decode to its canonical protobuf JSON and the
//! JSON must encode to exactly those bytes; the generated Rust types must know every field
//! (decode and re-encode give the same bytes) and the requests must survive the trip through
//! the model (`wire`), so the Rust client would send those very bytes; malformed messages must
//! be refused; and every result code must classify as the table says.
//!
//! `COLONY_WRITE_VECTORS=1 cargo test --test vectors` rewrites the `frame` values from the
//! JSON, after a change to the contract or to the vectors themselves.

use colony::wire::{self, pb};
use colony::Retry;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

fn vectors_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/testdata/vectors.json")
}

fn load() -> Value {
    let text = std::fs::read_to_string(vectors_path()).expect("read proto/testdata/vectors.json");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(pb::DESCRIPTORS).expect("the contract's descriptors decode")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn text<'a>(vector: &'a Value, key: &str) -> &'a str {
    vector[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector without {key}: {vector}"))
}

/// The frame the canonical JSON encodes to: length prefix and message.
fn frame_of(pool: &DescriptorPool, vector: &Value) -> Vec<u8> {
    let name = text(vector, "name");
    let descriptor = pool
        .get_message_by_name(text(vector, "message"))
        .unwrap_or_else(|| panic!("{name}: unknown message"));
    let message = DynamicMessage::deserialize(descriptor, vector["json"].clone())
        .unwrap_or_else(|e| panic!("{name}: its JSON does not fit the contract: {e}"));
    let body = message.encode_to_vec();
    let mut frame = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn frame_vectors(doc: &Value) -> Vec<&Value> {
    ["client_frames", "server_frames"]
        .iter()
        .flat_map(|list| doc[*list].as_array().expect("a list of frames"))
        .collect()
}

#[test]
fn the_vectors_cover_every_request_answer_and_code() {
    let doc = load();
    let mut bodies = std::collections::BTreeSet::new();
    for vector in frame_vectors(&doc) {
        let json = vector["json"].as_object().expect("json is an object");
        for key in json.keys().filter(|k| *k != "requestId") {
            bodies.insert(format!("{}.{key}", text(vector, "message")));
        }
    }
    let pool = pool();
    for message in ["colony.v1.ClientFrame", "colony.v1.ServerFrame"] {
        let descriptor = pool.get_message_by_name(message).expect("frame message");
        for field in descriptor
            .oneofs()
            .flat_map(|o| o.fields().collect::<Vec<_>>())
        {
            let body = format!("{message}.{}", field.json_name());
            assert!(bodies.contains(&body), "no vector carries {body}");
        }
    }
    let codes: Vec<&str> = doc["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| text(c, "code"))
        .collect();
    let errors: Vec<String> = frame_vectors(&doc)
        .iter()
        .filter_map(|v| v["json"]["error"]["code"].as_str().map(str::to_owned))
        .collect();
    let code_enum = pool.get_enum_by_name("colony.v1.Code").expect("Code");
    for value in code_enum.values() {
        assert!(
            codes.contains(&value.name()),
            "the code table misses {}",
            value.name()
        );
        if value.number() != 0 {
            assert!(
                errors.iter().any(|e| e == value.name()),
                "no RequestError vector with {}",
                value.name()
            );
        }
    }
    assert_eq!(
        codes.len(),
        code_enum.values().len(),
        "the code table lists a code twice"
    );
}

#[test]
fn every_frame_encodes_and_decodes_as_its_canonical_json_says() {
    let mut doc = load();
    let pool = pool();
    if std::env::var_os("COLONY_WRITE_VECTORS").is_some() {
        for list in ["client_frames", "server_frames"] {
            for vector in doc[list].as_array_mut().expect("frames") {
                let frame = frame_of(&pool, vector);
                vector["frame"] = Value::String(hex(&frame));
            }
        }
        let mut text = serde_json::to_string_pretty(&doc).expect("serialize");
        text.push('\n');
        std::fs::write(vectors_path(), text).expect("write vectors.json");
    }
    for vector in frame_vectors(&doc) {
        let name = text(vector, "name");
        let frame = unhex(text(vector, "frame"));
        assert_eq!(
            hex(&frame_of(&pool, vector)),
            hex(&frame),
            "{name}: the JSON encodes to other bytes"
        );
        let (length, body) = frame.split_at(4);
        let length = u32::from_be_bytes(length.try_into().expect("four bytes"));
        assert_eq!(
            length as usize,
            body.len(),
            "{name}: the length prefix is wrong"
        );

        let descriptor = pool
            .get_message_by_name(text(vector, "message"))
            .expect("message");
        let decoded = DynamicMessage::decode(descriptor, body).expect("the frame decodes");
        let json = serde_json::to_value(&decoded).expect("serialize");
        assert_eq!(
            json, vector["json"],
            "{name}: the bytes decode to another meaning"
        );

        // The generated types know every field: decoding and encoding again loses nothing.
        let again = match text(vector, "message") {
            "colony.v1.ClientFrame" => pb::ClientFrame::decode(body)
                .expect("decodes")
                .encode_to_vec(),
            _ => pb::ServerFrame::decode(body)
                .expect("decodes")
                .encode_to_vec(),
        };
        assert_eq!(
            hex(&again),
            hex(body),
            "{name}: the Rust types lose or reorder something"
        );
    }
}

#[test]
fn requests_survive_the_trip_through_the_model_unchanged() {
    let doc = load();
    for vector in doc["client_frames"].as_array().expect("frames") {
        let name = text(vector, "name");
        let frame = unhex(text(vector, "frame"));
        let request = pb::ClientFrame::decode(&frame[4..]).expect("decodes");
        match request.body.expect("every vector has a body") {
            pb::client_frame::Body::Batch(batch) => {
                for transaction in batch.transactions {
                    let envelope = wire::envelope_from_pb(transaction.clone())
                        .unwrap_or_else(|e| panic!("{name}: a valid transaction refused: {e}"));
                    assert_eq!(
                        wire::envelope_to_pb(&envelope),
                        transaction,
                        "{name}: changed by the model"
                    );
                }
                for item in batch.items {
                    let model = wire::item_from_pb(item.clone())
                        .unwrap_or_else(|e| panic!("{name}: a valid item refused: {e}"));
                    assert_eq!(
                        wire::item_to_pb(&model),
                        item,
                        "{name}: changed by the model"
                    );
                }
            }
            pb::client_frame::Body::GetPlayer(get) => {
                let read = wire::player_read_from_pb(get.clone()).expect("a valid GetPlayer");
                assert_eq!(
                    wire::player_read_to_pb(&read),
                    get,
                    "{name}: changed by the model"
                );
            }
            pb::client_frame::Body::Login(login) => {
                let player = wire::login_from_pb(login.clone()).expect("a valid Login");
                assert_eq!(
                    wire::login_to_pb(&player),
                    login,
                    "{name}: changed by the model"
                );
            }
            pb::client_frame::Body::Hello(hello) => {
                assert_eq!(
                    hello.protocol_version,
                    wire::PROTOCOL_VERSION,
                    "{name}: speaks another version"
                );
            }
            pb::client_frame::Body::Ping(_) => {}
        }
    }
}

#[test]
fn malformed_messages_are_refused() {
    let doc = load();
    let pool = pool();
    for vector in doc["malformed"].as_array().expect("malformed") {
        let name = text(vector, "name");
        let bytes = unhex(text(vector, "hex"));
        assert_eq!(text(vector, "message"), "colony.v1.ServerFrame", "{name}");
        assert!(
            pb::ServerFrame::decode(bytes.as_slice()).is_err(),
            "{name}: the Rust types accepted it"
        );
        let descriptor = pool
            .get_message_by_name(text(vector, "message"))
            .expect("message");
        assert!(
            DynamicMessage::decode(descriptor, bytes.as_slice()).is_err(),
            "{name}: reflection accepted it"
        );
    }
}

#[test]
fn every_code_classifies_as_the_table_says() {
    let doc = load();
    for entry in doc["codes"].as_array().expect("codes") {
        let name = text(entry, "code");
        let code = pb::Code::from_str_name(name).unwrap_or_else(|| panic!("{name} is not a code"));
        assert_eq!(
            Some(code as i64),
            entry["number"].as_i64(),
            "{name}: number"
        );
        let result = wire::result_from_pb(pb::TransactionResult {
            code: code as i32,
            message: format!("vector {name}"),
            version: 3,
            ..Default::default()
        });
        let (retry, applied) = match result {
            Ok(_) => ("none", true),
            Err(e) => {
                assert_eq!(
                    wire::code_to_pb(e.code()),
                    code,
                    "{name}: comes back as another code"
                );
                let retry = match e.retry() {
                    Retry::Never => "never",
                    Retry::SameRequest => "same_request",
                    Retry::AfterReread => "after_reread",
                };
                (retry, e.may_have_applied())
            }
        };
        assert_eq!(retry, text(entry, "retry"), "{name}: retry class");
        assert_eq!(
            Some(applied),
            entry["may_have_applied"].as_bool(),
            "{name}: may have applied"
        );
    }
}
