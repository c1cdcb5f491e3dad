//! What to simulate: players, sessions, batches, think time, the operation mix, pacing and
//! duration. Pure: built from the command line (or a test), validated, then only read.

use std::time::Duration;

/// One kind of simulated client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// The session's player logs in (owner view).
    Login,
    /// Reads the public part of a batch of other players ("friends").
    Friends,
    /// A batch of bounded coin increments on the session's players (checked at the end).
    Currency,
    /// A batch of public field writes on the session's players.
    Write,
    /// The session pauses (five think times plus 50 ms); see [`Op::Return`] for players who
    /// stay away long enough to be archived.
    Idle,
    /// A player who has been away comes back: a login and a coin change on one of the cold
    /// players, which no session plays otherwise, so that between visits they stay inactive
    /// long enough for the archiver to move them (and the login restores them).
    Return,
    /// The session's player gives a few coins to a random other player, usually on another
    /// shard: a multi-player transaction, checked at the end (both sides or neither, and the
    /// total conserved).
    Trade,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 7] = [
        Op::Login,
        Op::Friends,
        Op::Currency,
        Op::Write,
        Op::Trade,
        Op::Idle,
        Op::Return,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::Friends => "friends",
            Op::Currency => "currency",
            Op::Write => "write",
            Op::Idle => "idle",
            Op::Return => "return",
            Op::Trade => "trade",
        }
    }
}

/// Relative weights of the operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Weight of [`Op::Login`].
    pub login: u32,
    /// Weight of [`Op::Friends`].
    pub friends: u32,
    /// Weight of [`Op::Currency`].
    pub currency: u32,
    /// Weight of [`Op::Write`].
    pub write: u32,
    /// Weight of [`Op::Idle`].
    pub idle: u32,
    /// Weight of [`Op::Return`].
    pub returning: u32,
    /// Weight of [`Op::Trade`].
    pub trade: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            login: 5,
            friends: 30,
            currency: 40,
            write: 20,
            idle: 5,
            returning: 0,
            trade: 0,
        }
    }
}

impl Mix {
    fn weights(&self) -> [(Op, u32); 7] {
        [
            (Op::Login, self.login),
            (Op::Friends, self.friends),
            (Op::Currency, self.currency),
            (Op::Write, self.write),
            (Op::Trade, self.trade),
            (Op::Idle, self.idle),
            (Op::Return, self.returning),
        ]
    }

    /// The op a uniformly random `r` picks.
    pub fn pick(&self, r: u64) -> Op {
        let total: u64 = self.weights().iter().map(|(_, w)| u64::from(*w)).sum();
        let mut x = r % total.max(1);
        for (op, w) in self.weights() {
            if x < u64::from(w) {
                return op;
            }
            x -= u64::from(w);
        }
        Op::Currency
    }

    /// Parses `login=5,friends=30,currency=40,write=20,trade=10,idle=5,return=5` (missing
    /// names weigh 0).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            login: 0,
            friends: 0,
            currency: 0,
            write: 0,
            idle: 0,
            returning: 0,
            trade: 0,
        };
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} is not a number"))?;
            let slot = match name.trim() {
                "login" => &mut mix.login,
                "friends" => &mut mix.friends,
                "currency" => &mut mix.currency,
                "write" => &mut mix.write,
                "idle" => &mut mix.idle,
                "return" => &mut mix.returning,
                "trade" => &mut mix.trade,
                other => return Err(format!("unknown operation {other:?}")),
            };
            *slot = weight;
        }
        if mix.weights().iter().all(|(_, w)| *w == 0) {
            return Err("the mix has no operation with a weight".into());
        }
        Ok(mix)
    }
}

/// A whole load test.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Gateways, `host:port`; sessions are spread across them.
    pub gateways: Vec<String>,
    /// Token of the `game` role.
    pub token: String,
    /// Players simulated; ids are `<prefix>-<n>`.
    pub players: u64,
    /// Cold players, ids `<prefix>-<players + k>`: only [`Op::Return`] visits them.
    pub cold_players: u64,
    /// Prefix of player ids, so runs do not collide.
    pub prefix: String,
    /// Concurrent sessions; session `s` owns the players `n` with `n % sessions == s`.
    pub sessions: u64,
    /// Transactions per batch.
    pub batch: u64,
    /// Pause after each request of a session.
    pub think: Duration,
    /// The operation mix.
    pub mix: Mix,
    /// Requests per second over all sessions (paced, latency counted from the scheduled
    /// start), or `None` for a closed loop.
    pub rate: Option<f64>,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time before measuring starts (traffic runs, nothing is recorded but the ledger).
    pub warmup: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Faults to inject into a local cluster while the traffic runs, if any.
    pub chaos: Option<Chaos>,
    /// A file where another process records windows of its own (e.g. `colony-admin` moving
    /// slots, from `deploy/local/run.sh --cluster --reshard`), read when the traffic stops
    /// and reported and shaded like faults: one line per window, `label<TAB>start
    /// ms<TAB>end ms<TAB>what happened` (Unix milliseconds; end `-` while still open).
    pub windows: Option<std::path::PathBuf>,
}

/// Chaos mode: faults on a seeded schedule, through a local cluster's control directory
/// (see [`crate::control`]).
#[derive(Debug, Clone)]
pub struct Chaos {
    /// The control directory the launcher wrote.
    pub control: std::path::PathBuf,
    /// The kinds of fault, taking turns.
    pub faults: Vec<crate::chaos::FaultKind>,
    /// One fault in each slot this long.
    pub every: Duration,
}

impl Scenario {
    /// Checks that the numbers make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.gateways.is_empty() {
            return Err("at least one gateway is needed".into());
        }
        if self.players == 0 || self.sessions == 0 || self.batch == 0 {
            return Err("players, sessions and batch must be at least 1".into());
        }
        if self.sessions > self.players {
            return Err(format!(
                "{} sessions for {} players: every session needs a player of its own",
                self.sessions, self.players
            ));
        }
        if self.mix.returning > 0 && self.cold_players == 0 {
            return Err("the return operation needs cold players (--cold-players)".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("the rate must be a positive number".into());
        }
        if self.duration.is_zero() {
            return Err("the duration must be positive".into());
        }
        if let Some(chaos) = &self.chaos {
            if chaos.faults.is_empty() {
                return Err("chaos mode needs at least one kind of fault".into());
            }
            if chaos.every < Duration::from_secs(1) {
                return Err("faults need at least a second between them".into());
            }
            if self.schedule().is_empty() {
                return Err(format!(
                    "a {} s run has no room for a fault every {} s: lengthen --duration or shorten --chaos-every",
                    self.duration.as_secs(),
                    chaos.every.as_secs()
                ));
            }
        }
        Ok(())
    }
}

impl Scenario {
    /// The faults chaos mode will inject, from the end of the warm-up to the end of the run.
    pub fn schedule(&self) -> Vec<crate::chaos::PlannedFault> {
        match &self.chaos {
            Some(chaos) => crate::chaos::plan(
                self.seed,
                &chaos.faults,
                self.warmup,
                self.warmup + self.duration,
                chaos.every,
            ),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix = Mix::parse("login=1,currency=3").expect("valid");
        let picks: Vec<Op> = (0..4).map(|r| mix.pick(r)).collect();
        assert_eq!(
            picks,
            vec![Op::Login, Op::Currency, Op::Currency, Op::Currency]
        );
        for bad in ["", "login", "login=x", "dance=1", "login=0"] {
            assert!(Mix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scenarios_are_validated() {
        let good = Scenario {
            gateways: vec!["127.0.0.1:7400".into()],
            token: "t".into(),
            players: 10,
            cold_players: 0,
            prefix: "p".into(),
            sessions: 2,
            batch: 4,
            think: Duration::ZERO,
            mix: Mix::default(),
            rate: None,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            seed: 1,
            chaos: None,
            windows: None,
        };
        assert!(good.validate().is_ok());
        for bad in [
            Scenario {
                gateways: vec![],
                ..good.clone()
            },
            Scenario {
                sessions: 11,
                ..good.clone()
            },
            Scenario {
                batch: 0,
                ..good.clone()
            },
            Scenario {
                mix: Mix::parse("login=1,return=1").expect("valid"),
                ..good.clone()
            },
            Scenario {
                rate: Some(-1.0),
                ..good.clone()
            },
            Scenario {
                duration: Duration::ZERO,
                ..good.clone()
            },
            Scenario {
                chaos: Some(Chaos {
                    control: "control".into(),
                    faults: vec![crate::chaos::FaultKind::KillMaster],
                    every: Duration::from_secs(10),
                }),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
