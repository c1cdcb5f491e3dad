//! The archived player document and its schema version: how a Redis snapshot becomes a
//! MongoDB document and back.
//!
//! Pure: no IO. A document looks like
//!
//! ```text
//! { _id: "<player id>", v: <version, i64>, schema: 1, archived_at: <date>,
//!   state: "archived" | "checkpoint",
//!   public:  [ { k: "f:<name>", b: <binary> }, { k: "c:<name>", i: <i64> }, ... ],
//!   private: [ ... ],
//!   clients: [ { c: "<client id>", f: "<floor, decimal u64>", t: <last write ms, i64> }, ... ] }
//! ```
//!
//! `k` is the entry's field in the player's Redis hash (`f:` bytes field, `c:` counter).
//! `clients` (optional: absent in documents of earlier versions, read as empty) keeps each
//! client's idempotency floor — raised past every request it still remembered — so that a
//! restored player refuses retries too old to judge; the records themselves are not kept.
//! Documents carry `schema`; [`from_document`] reads every schema it knows (only 1 so far) and
//! refuses newer ones, so an old archiver never misreads what a newer one wrote.

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};

use colony::model::{Name, COUNTER_LIMIT};

/// The schema this archiver writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Whether a document is the archive of a player no longer in Redis, or a checkpoint copy of
/// a player who still is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocState {
    /// The player was moved out of Redis at this version.
    Archived,
    /// A copy of a live player, for rebuilding a lost shard.
    Checkpoint,
}

impl DocState {
    fn as_str(self) -> &'static str {
        match self {
            DocState::Archived => "archived",
            DocState::Checkpoint => "checkpoint",
        }
    }
}

/// Raw (field, value) pairs of one of a player's Redis hashes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A player as read from Redis: its version and the raw pairs of its two hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The player id.
    pub player: String,
    /// The version the entries belong to.
    pub version: u64,
    /// Public hash pairs (`f:<name>` or `c:<name>`, value).
    pub public: Pairs,
    /// Private hash pairs.
    pub private: Pairs,
    /// Each client's idempotency floor, as a restore puts it back.
    pub clients: Vec<ClientFloor>,
}

/// What survives of one client's idempotency window when its player leaves Redis: every
/// request of the client at or below `floor` is refused as too old after a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFloor {
    /// The client id.
    pub client: String,
    /// The largest request id the window forgot or still remembered.
    pub floor: u64,
    /// When the client last wrote to the player (ms, Redis clock).
    pub last_write_ms: u64,
}

impl ClientFloor {
    /// Reads a window state as the transaction script keeps it (`<floor> <last write ms>
    /// <count>` then ` <request>:<applied ms>` per remembered request) into a floor raised
    /// past every remembered request. `None` when the state is malformed or the window has
    /// neither a floor nor a remembered request.
    pub fn from_window_state(client: &str, state: &str) -> Option<ClientFloor> {
        let mut words = state.split(' ');
        let floor = words.next()?;
        let last_write_ms: u64 = words.next()?.parse().ok()?;
        let _count = words.next()?;
        let mut highest: Option<u64> = match floor {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        for remembered in words {
            let (id, _) = remembered.split_once(':')?;
            let id: u64 = id.parse().ok()?;
            highest = Some(highest.map_or(id, |h| h.max(id)));
        }
        Some(ClientFloor {
            client: client.to_string(),
            floor: highest?,
            last_write_ms,
        })
    }
}

/// Why a document cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archived document of {player:?} is unreadable: {reason}")]
pub struct DocumentError {
    /// The player, if the id was readable.
    pub player: String,
    /// What is wrong.
    pub reason: String,
}

fn entries(pairs: &Pairs) -> Result<Vec<Bson>, String> {
    pairs
        .iter()
        .map(|(field, value)| {
            let field =
                String::from_utf8(field.clone()).map_err(|_| "non-UTF-8 field".to_string())?;
            if let Some(_name) = field.strip_prefix("c:") {
                let text = std::str::from_utf8(value)
                    .map_err(|_| format!("counter {field} is not text"))?;
                let n: i64 = text
                    .parse()
                    .map_err(|_| format!("counter {field} is not a number"))?;
                Ok(Bson::Document(doc! { "k": field, "i": n }))
            } else {
                Ok(Bson::Document(doc! {
                    "k": field,
                    "b": Binary { subtype: BinarySubtype::Generic, bytes: value.clone() },
                }))
            }
        })
        .collect()
}

/// The document for `snapshot`, written at `archived_at`.
pub fn to_document(
    snapshot: &Snapshot,
    archived_at: DateTime,
    state: DocState,
) -> Result<Document, DocumentError> {
    let error = |reason: String| DocumentError {
        player: snapshot.player.clone(),
        reason,
    };
    Ok(doc! {
        "_id": &snapshot.player,
        "v": i64::try_from(snapshot.version).map_err(|_| error("version out of range".into()))?,
        "schema": SCHEMA_VERSION,
        "archived_at": archived_at,
        "state": state.as_str(),
        "public": entries(&snapshot.public).map_err(error)?,
        "private": entries(&snapshot.private).map_err(error)?,
        "clients": snapshot.clients.iter().map(|c| Ok(Bson::Document(doc! {
            "c": &c.client,
            "f": c.floor.to_string(),
            "t": i64::try_from(c.last_write_ms).map_err(|_| error("client time out of range".into()))?,
        }))).collect::<Result<Vec<Bson>, DocumentError>>()?,
    })
}

fn client_floors(document: &Document) -> Result<Vec<ClientFloor>, String> {
    let Some(list) = document.get("clients") else {
        return Ok(Vec::new());
    };
    let Bson::Array(list) = list else {
        return Err("clients is not an array".into());
    };
    list.iter()
        .map(|entry| {
            let entry = entry.as_document().ok_or("clients holds a non-document")?;
            let client = entry.get_str("c").map_err(|_| "client without c")?;
            colony::IdempotencyKey::new(client, 0)
                .map_err(|e| format!("client {client:?}: {e}"))?;
            let floor = entry
                .get_str("f")
                .ok()
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| format!("client {client:?} without a decimal floor f"))?;
            let last_write_ms = entry
                .get_i64("t")
                .ok()
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| format!("client {client:?} without a time t"))?;
            Ok(ClientFloor {
                client: client.to_string(),
                floor,
                last_write_ms,
            })
        })
        .collect()
}

fn pairs(document: &Document, key: &str) -> Result<Pairs, String> {
    let list = document
        .get_array(key)
        .map_err(|_| format!("{key} is not an array"))?;
    list.iter()
        .map(|entry| {
            let entry = entry
                .as_document()
                .ok_or_else(|| format!("{key} holds a non-document"))?;
            let field = entry
                .get_str("k")
                .map_err(|_| format!("{key} entry without k"))?;
            let (kind, name) = field
                .split_once(':')
                .ok_or_else(|| format!("entry {field:?} has no kind"))?;
            Name::new(name).map_err(|e| format!("entry {field:?}: {e}"))?;
            let value = match kind {
                "f" => match entry.get("b") {
                    Some(Bson::Binary(b)) => b.bytes.clone(),
                    _ => return Err(format!("field {field:?} without binary b")),
                },
                "c" => {
                    let n = entry
                        .get_i64("i")
                        .map_err(|_| format!("counter {field:?} without i"))?;
                    if !(-COUNTER_LIMIT..=COUNTER_LIMIT).contains(&n) {
                        return Err(format!("counter {field:?} out of range"));
                    }
                    n.to_string().into_bytes()
                }
                _ => return Err(format!("entry {field:?} has an unknown kind")),
            };
            Ok((field.as_bytes().to_vec(), value))
        })
        .collect()
}

/// Whether `document` is an archive or a checkpoint.
pub fn document_state(document: &Document) -> Result<DocState, DocumentError> {
    match document.get_str("state") {
        Ok("archived") => Ok(DocState::Archived),
        Ok("checkpoint") => Ok(DocState::Checkpoint),
        _ => Err(DocumentError {
            player: document.get_str("_id").unwrap_or_default().to_string(),
            reason: "no valid state".into(),
        }),
    }
}

/// Reads a document back into a snapshot, checking everything.
pub fn from_document(document: &Document) -> Result<Snapshot, DocumentError> {
    let player = document.get_str("_id").unwrap_or_default().to_string();
    let error = |reason: String| DocumentError {
        player: player.clone(),
        reason,
    };
    if player.is_empty() {
        return Err(error("no string _id".into()));
    }
    let schema = document
        .get_i32("schema")
        .map_err(|_| error("no schema".into()))?;
    if schema != SCHEMA_VERSION {
        // Schema 1 is the only one so far; a migration for an older one goes here.
        return Err(error(format!(
            "schema {schema} is not one this archiver reads"
        )));
    }
    document_state(document)?;
    let version = document
        .get_i64("v")
        .map_err(|_| error("no version".into()))?;
    let version = u64::try_from(version).map_err(|_| error("negative version".into()))?;
    Ok(Snapshot {
        version,
        public: pairs(document, "public").map_err(error)?,
        private: pairs(document, "private").map_err(error)?,
        clients: client_floors(document).map_err(error)?,
        player,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            player: "p-1".into(),
            version: 7,
            public: vec![
                (b"f:nick".to_vec(), b"Al".to_vec()),
                (b"c:level".to_vec(), b"12".to_vec()),
            ],
            private: vec![
                (b"f:mail".to_vec(), vec![0, 255]),
                (b"c:gold".to_vec(), b"-5".to_vec()),
            ],
            clients: vec![ClientFloor {
                client: "gs-1".into(),
                floor: u64::MAX,
                last_write_ms: 1_700_000_000_000,
            }],
        }
    }

    #[test]
    fn a_window_state_becomes_a_floor_past_everything_it_remembered() {
        let floor = |state| ClientFloor::from_window_state("c", state).map(|f| f.floor);
        assert_eq!(floor("- 1700 2 9:1 7:1"), Some(9));
        assert_eq!(floor("12 1700 1 3:1"), Some(12));
        assert_eq!(floor("18446744073709551615 5 0"), Some(u64::MAX));
        assert_eq!(
            ClientFloor::from_window_state("c", "5 1700 0").map(|f| f.last_write_ms),
            Some(1700)
        );
        for bad in ["- 1700 0", "", "x 1 0", "- y 0", "- 1 1 z:1", "- 1 1 9"] {
            assert_eq!(floor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn documents_of_earlier_versions_have_no_client_floors() {
        let mut document = to_document(&snapshot(), DateTime::from_millis(0), DocState::Archived)
            .expect("encodes");
        document.remove("clients");
        assert_eq!(from_document(&document).expect("reads").clients, vec![]);
    }

    #[test]
    fn snapshots_round_trip() {
        let document = to_document(&snapshot(), DateTime::from_millis(0), DocState::Archived)
            .expect("encodes");
        assert_eq!(document.get_i64("v"), Ok(7));
        assert_eq!(from_document(&document), Ok(snapshot()));
    }

    #[test]
    fn bad_documents_are_refused() {
        let good = to_document(&snapshot(), DateTime::from_millis(0), DocState::Archived)
            .expect("encodes");
        let mut newer = good.clone();
        newer.insert("schema", 2);
        let mut bad_name = good.clone();
        bad_name.insert("public", vec![Bson::Document(doc! { "k": "f:bad name", "b": Binary { subtype: BinarySubtype::Generic, bytes: vec![] } })]);
        let mut huge = good.clone();
        huge.insert(
            "private",
            vec![Bson::Document(doc! { "k": "c:g", "i": i64::MAX })],
        );
        let mut no_version = good.clone();
        no_version.remove("v");
        let mut no_state = good.clone();
        no_state.insert("state", "lost");
        let mut bad_client = good.clone();
        bad_client.insert(
            "clients",
            vec![Bson::Document(doc! { "c": "a:b", "f": "1", "t": 1i64 })],
        );
        let mut bad_floor = good.clone();
        bad_floor.insert(
            "clients",
            vec![Bson::Document(doc! { "c": "a", "f": "-1", "t": 1i64 })],
        );
        for document in [
            newer,
            bad_name,
            huge,
            no_version,
            no_state,
            bad_client,
            bad_floor,
            doc! {},
        ] {
            assert!(from_document(&document).is_err(), "{document}");
        }
        let mut not_a_number = snapshot();
        not_a_number
            .private
            .push((b"c:x".to_vec(), b"abc".to_vec()));
        assert!(to_document(
            &not_a_number,
            DateTime::from_millis(0),
            DocState::Checkpoint
        )
        .is_err());
    }
}
