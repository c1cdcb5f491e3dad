//! Authentication: the roles a token grants, the tokens a deployment accepts, and who a
//! connection (or an admin HTTP request) authenticated as. Tokens are compared in constant
//! time.
//!
//! Pure and low: configuration, the admin HTTP server, the gateway and the archiver stand on
//! it; it stands on nothing of Colony's. What a role may do to which player (authorization)
//! is the gateway's (`gateway::authorize`).

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A game server: each transaction acts for one player; it writes only that player and
    /// reads other players' public entries only.
    Game,
    /// Everything.
    Admin,
}

/// One accepted authentication token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name for logs and metrics (never the token itself).
    pub name: String,
    /// The secret a client presents in its Hello, at least 16 bytes.
    pub token: String,
    /// What the token may do.
    pub role: Role,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// The accepted tokens.
#[derive(Clone)]
pub struct Tokens {
    tokens: Vec<TokenConfig>,
}

impl Tokens {
    /// The tokens from configuration.
    pub fn new(tokens: Vec<TokenConfig>) -> Tokens {
        Tokens { tokens }
    }

    /// The first token of the `admin` role, for the gateway's own calls to the archiver.
    pub fn first_admin(&self) -> Option<String> {
        self.tokens
            .iter()
            .find(|t| t.role == Role::Admin)
            .map(|t| t.token.clone())
    }

    /// The principal whose token equals `presented`. Every configured token is compared, in
    /// constant time, so timing reveals neither which token matched nor how much of one did.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let mut found = None;
        for token in &self.tokens {
            let equal: bool = token.token.as_bytes().ct_eq(presented.as_bytes()).into();
            if equal && found.is_none() {
                found = Some(Principal {
                    name: token.name.clone(),
                    role: token.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A game token and an admin token, for the tests here and in `admin_http`.
    pub(crate) fn tokens() -> Tokens {
        Tokens::new(vec![
            TokenConfig {
                name: "game".into(),
                token: "game-secret-0123456789".into(),
                role: Role::Game,
            },
            TokenConfig {
                name: "ops".into(),
                token: "admin-secret-0123456789".into(),
                role: Role::Admin,
            },
        ])
    }

    #[test]
    fn only_exact_tokens_authenticate() {
        let t = tokens();
        assert_eq!(
            t.authenticate("admin-secret-0123456789").map(|p| p.role),
            Some(Role::Admin)
        );
        assert_eq!(
            t.authenticate("game-secret-0123456789").map(|p| p.name),
            Some("game".into())
        );
        for wrong in [
            "",
            "game-secret-012345678",
            "game-secret-01234567890",
            "GAME-secret-0123456789",
        ] {
            assert_eq!(t.authenticate(wrong), None, "{wrong:?}");
        }
        assert_eq!(Tokens::new(vec![]).authenticate(""), None);
    }
}
