//! Property: through the gateway with the game role, no private entry of a player is ever
//! returned to a caller acting for a different player, whatever the access mode, the names
//! asked for, or the request type.

mod common;

use colony::client::{Client, ClientConfig};
use colony::{Access, Committed, Envelope, Error, Operation, PlayerId, Transaction, Visibility};
use colony_testkit::{gateway_config, RedisServer, TestGateway, ADMIN_TOKEN, GAME_TOKEN};
use common::name;
use proptest::prelude::*;

const PLAYERS: [&str; 3] = ["ann", "ben", "cid"];
const NAMES: [&str; 3] = ["a", "b", "c"];

fn private_entries(c: &Committed) -> usize {
    c.reads
        .iter()
        .flat_map(|r| &r.entries)
        .filter(|e| e.visibility == Visibility::Private)
        .count()
}

#[test]
fn no_private_entry_reaches_another_player() {
    let servers = common::servers(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let gw = runtime
        .block_on(TestGateway::start(&gateway_config(&refs)))
        .expect("gateway");
    let (admin, game) = runtime.block_on(async {
        let admin = Client::connect(ClientConfig::new(gw.address.to_string(), ADMIN_TOKEN))
            .await
            .expect("admin");
        let game = Client::connect(ClientConfig::new(gw.address.to_string(), GAME_TOKEN))
            .await
            .expect("game");
        (admin, game)
    });
    // Every player has every name as a public and a private field and counter, in a mix.
    runtime.block_on(async {
        for p in PLAYERS {
            let mut txn = Transaction::owner(PlayerId::new(p).expect("id"), Some(admin.next_key()));
            for (i, n) in NAMES.iter().enumerate() {
                let vis = if i % 2 == 0 {
                    Visibility::Private
                } else {
                    Visibility::Public
                };
                let other = if i % 2 == 0 {
                    Visibility::Public
                } else {
                    Visibility::Private
                };
                txn = txn
                    .with(Operation::SetField {
                        name: name(n),
                        value: b"v".to_vec(),
                        visibility: vis,
                    })
                    .with(Operation::IncrementCounter {
                        name: name(n),
                        delta: 1,
                        min: None,
                        max: None,
                        visibility: other,
                    });
            }
            admin.execute(txn).await.expect("setup");
        }
    });

    let strategy = (
        0..PLAYERS.len(),
        0..PLAYERS.len(),
        any::<bool>(),
        prop::collection::vec(0..NAMES.len(), 0..3),
        0..3u8,
    );
    proptest!(ProptestConfig::with_cases(96), |((actor, target, owner_access, names, kind) in strategy)| {
        let actor = PlayerId::new(PLAYERS[actor]).expect("id");
        let target = PlayerId::new(PLAYERS[target]).expect("id");
        let access = if owner_access { Access::Owner } else { Access::Public };
        let result: Result<Committed, Error> = runtime.block_on(async {
            match kind {
                0 => game.get_player(&target, access, Some(&actor)).await,
                1 => {
                    let txn = Transaction {
                        access,
                        ..Transaction::owner(target.clone(), None).with(Operation::Read {
                            names: names.iter().map(|&i| name(NAMES[i])).collect(),
                        })
                    };
                    game.execute(Envelope::acting_for(actor.clone(), txn)).await
                }
                _ => game.login(&target).await,
            }
        });
        // Login is the player acting for itself; otherwise only the acting player's own
        // owner reads may carry private entries.
        let owner_view = kind == 2 || (access == Access::Owner && actor == target);
        match result {
            // Every player has a private entry under every name, so an owner view that shows
            // none would mean the test checks nothing.
            Ok(c) if owner_view => prop_assert!(private_entries(&c) > 0),
            Ok(c) => prop_assert_eq!(private_entries(&c), 0, "leaked to {:?}: {:?}", actor, c),
            Err(Error::Forbidden(_)) => {
                prop_assert!(access == Access::Owner && actor != target && kind != 2)
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    });
    drop(gw);
}
