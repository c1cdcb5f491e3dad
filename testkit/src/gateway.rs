//! Configurations for test clusters, the test tokens, and a real gateway served in process.

use colony::config::Config;

use crate::redis_server::RedisServer;

/// A configuration whose shards are `servers`, in order, with default settings.
pub fn config_for(servers: &[&RedisServer]) -> Config {
    let mut text = String::new();
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"shard-{i}\"\nmaster = \"{}\"\n",
            server.address()
        ));
    }
    match Config::from_toml(&text, []) {
        Ok(config) => config,
        Err(e) => panic!("test configuration is invalid: {e}"),
    }
}

/// Token of the `game` role in [`gateway_config`].
pub const GAME_TOKEN: &str = "game-token-for-tests-0001";
/// Token of the `admin` role in [`gateway_config`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

/// A configuration for `servers` with a game and an admin token, listening on free ports.
pub fn gateway_config(servers: &[&RedisServer]) -> Config {
    with_test_gateway(config_for(servers))
}

/// `config` with the game and admin test tokens, listening on free loopback ports.
pub fn with_test_gateway(mut config: Config) -> Config {
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.admin_listen = "127.0.0.1:0".into();
    config.gateway.tokens = vec![
        colony::auth::TokenConfig {
            name: "game".into(),
            token: GAME_TOKEN.into(),
            role: colony::auth::Role::Game,
        },
        colony::auth::TokenConfig {
            name: "admin".into(),
            token: ADMIN_TOKEN.into(),
            role: colony::auth::Role::Admin,
        },
    ];
    config
}

/// A real gateway, in process, serving TCP and admin HTTP on free loopback ports.
pub struct TestGateway {
    /// The protobuf listener's address.
    pub address: std::net::SocketAddr,
    /// The admin HTTP listener's address.
    pub admin_address: std::net::SocketAddr,
    /// The gateway (store, metrics).
    pub gateway: colony::gateway::Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway for `config` (whose listen addresses should use port 0).
    pub async fn start(config: &Config) -> std::io::Result<TestGateway> {
        let gateway = colony::gateway::Gateway::connect(config)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
        let admin = tokio::net::TcpListener::bind(&config.gateway.admin_listen).await?;
        let address = listener.local_addr()?;
        let admin_address = admin.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let served = gateway.clone();
        let task = tokio::spawn(async move {
            let admin_task = tokio::spawn(colony::gateway::admin::serve(
                admin,
                served.clone(),
                async move {
                    let _ = admin_stopped.await;
                },
            ));
            colony::gateway::run(listener, served, async move {
                let _ = stopped.await;
            })
            .await;
            let _ = admin_stop.send(());
            let _ = admin_task.await;
        });
        Ok(TestGateway {
            address,
            admin_address,
            gateway,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until every connection has drained.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}
