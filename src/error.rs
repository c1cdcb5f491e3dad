//! The library's typed error, and what a caller may do about each kind.
//!
//! Every failure a transaction can meet is one variant here, with a [`Code`] that the wire
//! protocol carries and a [`Retry`] advice. Storage errors are classified where they happen
//! (`store`), so callers never parse messages to decide whether to retry.

use std::fmt;

/// Result codes shared by the library and the wire protocol (`colony.v1.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The transaction committed (or a read succeeded).
    Ok,
    /// A version or field check failed; nothing was applied.
    Conflict,
    /// The player does not exist.
    NotFound,
    /// A counter increment would leave its bounds; nothing was applied.
    OutOfBounds,
    /// A write would grow the player past `limits.max_player_bytes` or
    /// `limits.max_player_entries`; nothing was applied.
    PlayerTooLarge,
    /// The request is malformed.
    Invalid,
    /// The connection has not authenticated.
    Unauthenticated,
    /// The caller may not do this.
    Forbidden,
    /// A configured size or count limit was exceeded.
    TooLarge,
    /// The shard could not be reached; nothing was sent.
    Unavailable,
    /// The deadline passed before the request was sent.
    Timeout,
    /// The request was sent, but whether it applied is unknown.
    Unknown,
    /// The idempotency key was already used for a different transaction.
    IdempotencyMismatch,
    /// A bug, or a reply from storage that Colony does not understand.
    Internal,
    /// The request id is older than the client's idempotency window on the player can
    /// judge: it may have applied before; nothing was applied now.
    RequestTooOld,
    /// A player holds the intent of a multi-player transaction in progress; nothing was
    /// applied. Send the same request again after a pause.
    Locked,
}

impl Code {
    /// The wire name of the code, as in `proto/colony/v1/colony.proto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Conflict => "CONFLICT",
            Code::NotFound => "NOT_FOUND",
            Code::OutOfBounds => "OUT_OF_BOUNDS",
            Code::PlayerTooLarge => "PLAYER_TOO_LARGE",
            Code::Invalid => "INVALID",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::TooLarge => "TOO_LARGE",
            Code::Unavailable => "UNAVAILABLE",
            Code::Timeout => "TIMEOUT",
            Code::Unknown => "UNKNOWN",
            Code::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            Code::Internal => "INTERNAL",
            Code::RequestTooOld => "REQUEST_TOO_OLD",
            Code::Locked => "LOCKED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller may do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Sending the same request again cannot succeed.
    Never,
    /// Send the same request again, with the same idempotency key: it applies at most once,
    /// and for [`Code::Unknown`] the retry reveals whether the first attempt applied.
    SameRequest,
    /// The player changed: read it again, rebuild the transaction, and send it with a new
    /// request id.
    AfterReread,
}

/// Every way a Colony call can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Malformed input: a bad name, a missing idempotency key, an empty transaction.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Input over a configured limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The access mode does not allow the operation.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The gateway did not accept the connection's credentials (an unknown token, or no
    /// Hello first). Distinct from [`Error::Forbidden`]: who the caller is, not what it may do.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A check failed; nothing was applied.
    #[error("conflict at operation {operation_index}; the player is at version {version}")]
    Conflict {
        /// The player's current version.
        version: u64,
        /// Index of the failed check in the transaction.
        operation_index: u32,
    },
    /// A bounded increment would leave its bounds; nothing was applied.
    #[error("operation {operation_index} is out of bounds; the player is at version {version}")]
    OutOfBounds {
        /// The player's current version.
        version: u64,
        /// Index of the failed increment in the transaction.
        operation_index: u32,
    },
    /// A write would grow the player past its configured bounds; nothing was applied.
    #[error(
        "operation {operation_index} would grow the player past limits.max_player_bytes or \
         limits.max_player_entries; the player is at version {version}"
    )]
    PlayerTooLarge {
        /// The player's current version.
        version: u64,
        /// Index of the last write of the transaction.
        operation_index: u32,
    },
    /// The idempotency key was used before for a different transaction; nothing was applied.
    #[error(
        "idempotency key already used for a different transaction (player at version {version})"
    )]
    IdempotencyMismatch {
        /// The player's current version.
        version: u64,
    },
    /// The request id is at or below the floor of the client's idempotency window on the
    /// player: a request that old may or may not have applied, and the window can no longer
    /// tell. Nothing was applied now. Read the player and decide; never resend it as it is.
    #[error(
        "request id older than the client's idempotency window on this player (player at \
         version {version}); it may have applied before and nothing was applied now: read the \
         player and decide"
    )]
    RequestTooOld {
        /// The player's current version.
        version: u64,
    },
    /// The player does not exist.
    #[error("player not found")]
    NotFound,
    /// The player is archived in MongoDB and is being restored; the store asks the archiver
    /// and retries by itself, so callers see this only from the script's decoder. It becomes
    /// UNAVAILABLE when the archiver does not restore the player in time.
    #[error("player archived at version {version}; restore requested")]
    Archived {
        /// The version the player was archived at.
        version: u64,
    },
    /// The shard could not be reached, and nothing was sent to it.
    #[error("{}: {reason}", with_shard("unavailable", "", .shard))]
    Unavailable {
        /// Name of the shard, when the error was met on one (the store's errors name it; an
        /// error read from the wire, or met before any shard was chosen, does not).
        shard: Option<String>,
        /// What went wrong.
        reason: String,
    },
    /// The deadline passed before the request was sent.
    #[error("{}", with_shard("timed out before sending", " to", .shard))]
    Timeout {
        /// Name of the shard, when one was chosen.
        shard: Option<String>,
    },
    /// The request reached (or may have reached) the shard, but no answer came back.
    #[error("{}: {reason}", with_shard("outcome unknown", " on", .shard))]
    Unknown {
        /// Name of the shard, when the error was met on one.
        shard: Option<String>,
        /// What went wrong.
        reason: String,
    },
    /// A player holds the intent of a multi-player transaction that is in progress (its
    /// lease has not passed); nothing was applied. The store and the client send the same
    /// request again after a pause; an intent whose lease passed is resolved, never waited on.
    #[error("player {player:?} is locked by a multi-player transaction in progress: {reason}")]
    Locked {
        /// The player holding the intent.
        player: String,
        /// Which transaction, and until when.
        reason: String,
    },
    /// What went wrong with one participant of a multi-player transaction (by position, from
    /// 0); its code is the inner error's.
    #[error("participant {participant}: {error}")]
    InParticipant {
        /// The participant's position in the transaction.
        participant: u32,
        /// What went wrong there.
        error: Box<Error>,
    },
    /// A bug, or a storage reply Colony does not understand.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The wire code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::Invalid,
            Error::TooLarge(_) => Code::TooLarge,
            Error::Forbidden(_) => Code::Forbidden,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Conflict { .. } => Code::Conflict,
            Error::OutOfBounds { .. } => Code::OutOfBounds,
            Error::PlayerTooLarge { .. } => Code::PlayerTooLarge,
            Error::IdempotencyMismatch { .. } => Code::IdempotencyMismatch,
            Error::RequestTooOld { .. } => Code::RequestTooOld,
            Error::NotFound => Code::NotFound,
            Error::Archived { .. } => Code::Unavailable,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Timeout { .. } => Code::Timeout,
            Error::Unknown { .. } => Code::Unknown,
            Error::Locked { .. } => Code::Locked,
            Error::InParticipant { error, .. } => error.code(),
            Error::Internal(_) => Code::Internal,
        }
    }

    /// Whether, and how, retrying may help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Unavailable { .. }
            | Error::Timeout { .. }
            | Error::Unknown { .. }
            | Error::Archived { .. }
            | Error::Locked { .. } => Retry::SameRequest,
            Error::InParticipant { error, .. } => error.retry(),
            Error::Conflict { .. } => Retry::AfterReread,
            Error::Invalid(_)
            | Error::TooLarge(_)
            | Error::Forbidden(_)
            | Error::Unauthenticated(_)
            | Error::OutOfBounds { .. }
            | Error::PlayerTooLarge { .. }
            | Error::IdempotencyMismatch { .. }
            | Error::RequestTooOld { .. }
            | Error::NotFound
            | Error::Internal(_) => Retry::Never,
        }
    }

    /// True when the request may have applied although this error answered it: only
    /// [`Code::Unknown`] and [`Code::Internal`]. Every other error means this attempt applied
    /// nothing (PROTOCOL.md, "Which codes may follow a write that applied").
    pub fn may_have_applied(&self) -> bool {
        matches!(self.code(), Code::Unknown | Code::Internal)
    }

    /// True when sending the very same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::SameRequest
    }

    /// A definite refusal read from a write call (nothing applied, and not worth sending
    /// again), given whether the call's replicas acknowledged it. Unacknowledged, the master
    /// may have judged the request by a state its replicas do not hold (a master woken after
    /// its failover, whose window misses a key the shard applied), so the refusal is not
    /// final: UNAVAILABLE, which says this call applied nothing and lets a retry (or an
    /// earlier attempt's UNKNOWN) decide. Any other error, or an acknowledged call, stays.
    pub fn unless_unacknowledged(self, acknowledged: &Result<(), Error>) -> Error {
        match acknowledged {
            Err(unacknowledged) if !self.is_retryable() && !self.may_have_applied() => {
                let shard = match unacknowledged {
                    Error::Unavailable { shard, .. }
                    | Error::Timeout { shard }
                    | Error::Unknown { shard, .. } => shard.clone(),
                    _ => None,
                };
                Error::Unavailable {
                    shard,
                    reason: format!(
                        "the shard answered \"{self}\", but not as a master its replicas \
                         follow: {unacknowledged}"
                    ),
                }
            }
            _ => self,
        }
    }

    /// The outcome of a retried request, from what the latest attempt answered and what the
    /// earlier ones did. Once an attempt was sent without an answer (UNKNOWN), a later
    /// attempt that was not sent or did not run (UNAVAILABLE, TIMEOUT, still archived), or
    /// whose window could no longer judge it (REQUEST_TOO_OLD), says nothing about the
    /// first: the outcome stays UNKNOWN, never "not applied". Any other
    /// answer settles it (a replay of the same idempotency key answers OK).
    pub fn after_attempts<T>(
        latest: Result<T, Error>,
        earlier: Option<&Result<T, Error>>,
    ) -> Result<T, Error> {
        match (latest, earlier) {
            // REQUEST_TOO_OLD says the window can no longer tell whether the request applied:
            // it settles nothing either. Codes are compared, not variants, so an error about
            // one participant of a multi-player transaction (`InParticipant`) is judged by
            // what it says.
            (Err(latest), Some(Err(unknown)))
                if unknown.code() == Code::Unknown
                    && matches!(
                        latest.code(),
                        Code::Unavailable | Code::Timeout | Code::Locked | Code::RequestTooOld
                    ) =>
            {
                Err(unknown.clone())
            }
            (latest, _) => latest,
        }
    }
}

/// Why a component could not be built from its configuration (the store, the gateway, a
/// TLS endpoint): nothing was served. Distinct from [`Error`], which is about requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The configuration breaks a rule `Config::validate` checks.
    #[error("configuration: {0}")]
    Config(String),
    /// A TLS certificate, key or CA could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A Redis Cluster's map could not be read from its seeds.
    #[error("Redis Cluster: {0}")]
    Cluster(String),
}

/// `what` naming the shard it happened on, if one: `unavailable` becomes `shard s0 unavailable`
/// (`joint` empty) and `outcome unknown` becomes `outcome unknown on shard s0` (`joint` " on").
fn with_shard(what: &str, joint: &str, shard: &Option<String>) -> String {
    match (shard, joint) {
        (None, _) => what.to_string(),
        (Some(name), "") => format!("shard {name} {what}"),
        (Some(name), joint) => format!("{what}{joint} shard {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_name_their_shard_when_they_have_one() {
        let on = |shard: Option<&str>| shard.map(str::to_string);
        let unavailable = |shard| Error::Unavailable {
            shard: on(shard),
            reason: "down".into(),
        };
        let unknown = |shard| Error::Unknown {
            shard: on(shard),
            reason: "reset".into(),
        };
        assert_eq!(
            unavailable(Some("s0")).to_string(),
            "shard s0 unavailable: down"
        );
        assert_eq!(unavailable(None).to_string(), "unavailable: down");
        assert_eq!(
            unknown(Some("s0")).to_string(),
            "outcome unknown on shard s0: reset"
        );
        assert_eq!(unknown(None).to_string(), "outcome unknown: reset");
        assert_eq!(
            Error::Timeout {
                shard: on(Some("s0"))
            }
            .to_string(),
            "timed out before sending to shard s0"
        );
        assert_eq!(
            Error::Timeout { shard: None }.to_string(),
            "timed out before sending"
        );
    }

    #[test]
    fn an_unknown_outcome_is_not_settled_by_an_attempt_that_was_not_sent() {
        let unknown = Error::Unknown {
            shard: Some("s".into()),
            reason: "connection lost after sending".into(),
        };
        let not_sent = [
            Error::Unavailable {
                shard: Some("s".into()),
                reason: "connection refused".into(),
            },
            Error::Timeout {
                shard: Some("s".into()),
            },
            Error::Archived { version: 3 },
            Error::RequestTooOld { version: 3 },
            Error::Locked {
                player: "p".into(),
                reason: "attempt a1".into(),
            },
        ];
        for latest in &not_sent {
            assert_eq!(
                Error::after_attempts::<u64>(Err(latest.clone()), Some(&Err(unknown.clone()))),
                Err(unknown.clone()),
                "{latest:?}"
            );
            // Without an unknown attempt before, the latest answer stands.
            assert_eq!(
                Error::after_attempts::<u64>(Err(latest.clone()), Some(&Err(not_sent[0].clone()))),
                Err(latest.clone())
            );
            assert_eq!(
                Error::after_attempts::<u64>(Err(latest.clone()), None),
                Err(latest.clone())
            );
        }
        // The same when either is about one participant of a multi-player transaction.
        let in_participant = |error: &Error| Error::InParticipant {
            participant: 1,
            error: Box::new(error.clone()),
        };
        for latest in &not_sent {
            assert_eq!(
                Error::after_attempts::<u64>(
                    Err(in_participant(latest)),
                    Some(&Err(in_participant(&unknown)))
                ),
                Err(in_participant(&unknown)),
                "{latest:?}"
            );
            assert_eq!(
                Error::after_attempts::<u64>(
                    Err(latest.clone()),
                    Some(&Err(in_participant(&unknown)))
                ),
                Err(in_participant(&unknown)),
                "{latest:?}"
            );
        }
        // A definite answer settles an unknown one.
        let ok: Result<u64, Error> = Ok(4);
        assert_eq!(
            Error::after_attempts(ok.clone(), Some(&Err(unknown.clone()))),
            ok
        );
        let refused: Result<u64, Error> = Err(Error::OutOfBounds {
            version: 4,
            operation_index: 0,
        });
        assert_eq!(
            Error::after_attempts(refused.clone(), Some(&Err(unknown.clone()))),
            refused
        );
    }

    #[test]
    fn only_transport_failures_are_retried_as_is() {
        let unknown = Error::Unknown {
            shard: Some("s0".into()),
            reason: "reset".into(),
        };
        assert!(unknown.is_retryable());
        assert_eq!(unknown.code(), Code::Unknown);
        let conflict = Error::Conflict {
            version: 3,
            operation_index: 0,
        };
        assert_eq!(conflict.retry(), Retry::AfterReread);
        assert!(!Error::Invalid("x".into()).is_retryable());
        // Too old for the window: resending cannot help; the caller reads and decides.
        let too_old = Error::RequestTooOld { version: 2 };
        assert_eq!(
            (too_old.retry(), too_old.code()),
            (Retry::Never, Code::RequestTooOld)
        );
        assert!(!Error::OutOfBounds {
            version: 1,
            operation_index: 2
        }
        .is_retryable());
    }
}
