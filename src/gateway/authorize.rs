//! Authorization: what a role may do to which player (authentication is [`crate::auth`]).
//!
//! Pure: decisions only, no IO. The rules:
//!
//! - `admin` may do everything.
//! - `game` acts for one player per transaction, named by the envelope's `acting_player`
//!   ([`Envelope`]). It may use owner
//!   access only on that player; on any other player it may only read public entries and
//!   check the version (public access). Without an acting player nothing is allowed.

use crate::auth::Role;
use crate::error::Error;
use crate::model::{Access, MultiTransaction, PlayerId};
use crate::wire::Envelope;

/// May `role` run the envelope's transaction, acting for the envelope's player?
pub fn authorize_envelope(role: Role, envelope: &Envelope) -> Result<(), Error> {
    let txn = &envelope.transaction;
    authorize(
        role,
        &txn.player,
        txn.access,
        envelope.acting_player.as_ref(),
    )
}

/// May `role` run the envelope's multi-player transaction? The game role must act for one of
/// its participants, and only that participant may use owner access; it may write every
/// participant (a game server mediates the trade), while the others' reads and checks see
/// their public entries only.
pub fn authorize_multi(role: Role, envelope: &Envelope<MultiTransaction>) -> Result<(), Error> {
    if role == Role::Admin {
        return Ok(());
    }
    let Some(acting) = envelope.acting_player.as_ref() else {
        return Err(Error::Forbidden(
            "the game role must name the acting player".into(),
        ));
    };
    let participants = &envelope.transaction.participants;
    if !participants.iter().any(|p| &p.player == acting) {
        return Err(Error::Forbidden(format!(
            "acting for {:?}, which is not a participant",
            acting.as_str()
        )));
    }
    for (index, p) in participants.iter().enumerate() {
        if p.access == Access::Owner && &p.player != acting {
            return Err(Error::InParticipant {
                participant: index as u32,
                error: Box::new(Error::Forbidden(format!(
                    "acting for {:?}, owner access to another player is not allowed",
                    acting.as_str()
                ))),
            });
        }
    }
    Ok(())
}

/// May `role`, acting for `acting`, use `access` on `player`?
pub fn authorize(
    role: Role,
    player: &PlayerId,
    access: Access,
    acting: Option<&PlayerId>,
) -> Result<(), Error> {
    match role {
        Role::Admin => Ok(()),
        Role::Game => {
            let Some(acting) = acting else {
                return Err(Error::Forbidden(
                    "the game role must name the acting player".into(),
                ));
            };
            if access == Access::Owner && acting != player {
                return Err(Error::Forbidden(format!(
                    "acting for {:?}, owner access to another player is not allowed",
                    acting.as_str()
                )));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{IdempotencyKey, Name, Operation, Transaction, Visibility};

    #[test]
    fn the_game_role_owns_only_its_acting_player() {
        let me = PlayerId::new("me").expect("valid");
        let other = PlayerId::new("other").expect("valid");
        let write = |player: &PlayerId, acting: Option<&PlayerId>| Envelope {
            acting_player: acting.cloned(),
            transaction: Transaction::owner(player.clone(), IdempotencyKey::new("c", 1).ok()).with(
                Operation::SetField {
                    name: Name::new("x").expect("valid"),
                    value: vec![],
                    visibility: Visibility::Public,
                },
            ),
        };
        assert!(authorize_envelope(Role::Game, &write(&me, Some(&me))).is_ok());
        assert!(matches!(
            authorize_envelope(Role::Game, &write(&other, Some(&me))),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            authorize_envelope(Role::Game, &write(&me, None)),
            Err(Error::Forbidden(_))
        ));
        assert!(authorize_envelope(Role::Admin, &write(&other, None)).is_ok());
        assert!(authorize(Role::Game, &other, Access::Public, Some(&me)).is_ok());
        assert!(matches!(
            authorize(Role::Game, &other, Access::Owner, Some(&me)),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn the_game_role_trades_for_a_participant_and_owns_only_its_part() {
        use crate::model::Participant;
        let me = PlayerId::new("me").expect("valid");
        let other = PlayerId::new("other").expect("valid");
        let third = PlayerId::new("third").expect("valid");
        let gold = Operation::IncrementCounter {
            name: Name::new("gold").expect("valid"),
            delta: 1,
            min: None,
            max: None,
            visibility: Visibility::Private,
        };
        let trade = |other_access: Access| {
            MultiTransaction::new(IdempotencyKey::new("c", 1).expect("valid"))
                .with(Participant::owner(me.clone()).with(gold.clone()))
                .with(Participant {
                    access: other_access,
                    ..Participant::owner(other.clone()).with(gold.clone())
                })
        };
        let by = |acting: Option<&PlayerId>, t: MultiTransaction| Envelope {
            acting_player: acting.cloned(),
            transaction: t,
        };
        assert!(authorize_multi(Role::Game, &by(Some(&me), trade(Access::Public))).is_ok());
        assert!(matches!(
            authorize_multi(Role::Game, &by(Some(&me), trade(Access::Owner))),
            Err(Error::InParticipant { participant: 1, .. })
        ));
        assert!(matches!(
            authorize_multi(Role::Game, &by(Some(&third), trade(Access::Public))),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            authorize_multi(Role::Game, &by(None, trade(Access::Public))),
            Err(Error::Forbidden(_))
        ));
        assert!(authorize_multi(Role::Admin, &by(None, trade(Access::Owner))).is_ok());
    }
}
