//! The HTTP server under the gateway's and the archiver's admin routes, with the bounds any
//! listener needs even on a private network: a cap on open connections (more are closed at
//! once, so stalled clients cannot use up the process's file descriptors), a time limit for
//! the request headers, a time limit for the answer, and one request per connection, so that
//! nothing an admin client does can hold a connection longer than those two limits.
//!
//! It also holds the admin port's one access rule ([`admin_only`]): `/metrics`, `/healthz` and
//! `/readyz` are open (scrapers and orchestrators carry no secrets), and every other route —
//! status, the console, player lookup — answers only to a token of the `admin` role.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::Role;
use crate::auth::Tokens;

/// The challenge a refused request gets: Basic first, so a browser opening the console asks
/// for the token (any user name, the token as password); scripts send `Bearer <token>`.
const CHALLENGE: &str = "Basic realm=\"colony admin\", charset=\"UTF-8\"";

/// `routes` answering only to a token of the `admin` role, presented as
/// `Authorization: Bearer <token>` or as the password of `Authorization: Basic`. Without a
/// token, or with one no role has: 401 and a challenge. With a `game` token: 403. Either way
/// the route's handler never runs.
pub fn admin_only(routes: Router, tokens: Tokens) -> Router {
    routes.route_layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let verdict = admin_verdict(&tokens, request.headers());
            async move {
                match verdict {
                    Ok(()) => next.run(request).await,
                    Err(StatusCode::FORBIDDEN) => {
                        (StatusCode::FORBIDDEN, "the admin role is required\n").into_response()
                    }
                    Err(status) => (
                        status,
                        [(header::WWW_AUTHENTICATE, CHALLENGE)],
                        "an admin token is required\n",
                    )
                        .into_response(),
                }
            }
        },
    ))
}

/// Whether `headers` carry an admin token: `Ok`, or 401 (none, malformed, unknown) or 403 (a
/// token of another role).
fn admin_verdict(tokens: &Tokens, headers: &HeaderMap) -> Result<(), StatusCode> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(presented_token)
        .ok_or(StatusCode::UNAUTHORIZED)?;
    match tokens.authenticate(&presented) {
        Some(principal) if principal.role == Role::Admin => Ok(()),
        Some(_) => Err(StatusCode::FORBIDDEN),
        None => Err(StatusCode::UNAUTHORIZED),
    }
}

/// The token in an `Authorization` value: `Bearer <token>`, or `Basic <base64(user:token)>`
/// (the user name is ignored). `None` for anything else.
fn presented_token(authorization: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, token) = text.split_once(':')?;
        return Some(token.to_string());
    }
    None
}

/// The bounds of an admin listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time for the request headers to arrive, and again for the answer.
    pub request_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then lets the
/// requests being answered finish, for at most one request timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
            }
        },
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("admin connection refused: too many open");
                    continue;
                };
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    // Headers, then the answer: each has its own limit, so the whole
                    // connection is over within both (plus writing, which the kernel buffers).
                    let _ = tokio::time::timeout(timeout * 2 + Duration::from_secs(1), connection)
                        .await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The limits `gateway.admin_max_connections` and `gateway.admin_request_timeout_ms` set.
pub fn limits_of(config: &crate::config::GatewayConfig) -> AdminLimits {
    AdminLimits {
        max_connections: config.admin_max_connections,
        request_timeout: config.admin_request_timeout(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::tokens;

    fn with(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            authorization.parse().expect("a header value"),
        );
        headers
    }

    #[test]
    fn only_an_admin_token_passes() {
        use base64::Engine;
        let basic = |user_token: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_token)
            )
        };
        let t = tokens();
        assert_eq!(
            admin_verdict(&t, &with("Bearer admin-secret-0123456789")),
            Ok(())
        );
        assert_eq!(
            admin_verdict(&t, &with("bearer   admin-secret-0123456789 ")),
            Ok(())
        );
        assert_eq!(
            admin_verdict(&t, &with(&basic("anyone:admin-secret-0123456789"))),
            Ok(())
        );
        assert_eq!(
            admin_verdict(&t, &with("Bearer game-secret-0123456789")),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            admin_verdict(&t, &with(&basic("x:game-secret-0123456789"))),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            admin_verdict(&t, &HeaderMap::new()),
            Err(StatusCode::UNAUTHORIZED)
        );
        for refused in [
            "Bearer admin-secret-012345678",
            "Bearer",
            "Token admin-secret-0123456789",
            "admin-secret-0123456789",
            "Basic !!!not-base64",
            // Without a colon there is no password.
            "Basic YWRtaW4tc2VjcmV0LTAxMjM0NTY3ODk=",
        ] {
            assert_eq!(
                admin_verdict(&t, &with(refused)),
                Err(StatusCode::UNAUTHORIZED),
                "{refused:?}"
            );
        }
    }
}
