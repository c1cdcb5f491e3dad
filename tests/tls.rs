//! TLS on the gateway's listener, with a self-signed certificate made by the test.

mod common;

use std::time::Duration;

use colony::client::{Client, ClientConfig, ClientTls};
use colony::config::TlsConfig;
use colony::gateway::Gateway;
use colony::{Envelope, Error, Operation, Transaction, Visibility};
use colony_testkit::{gateway_config, RedisServer, TestGateway, GAME_TOKEN};
use common::{name, pid};

struct Certificate {
    _dir: tempfile::TempDir,
    tls: TlsConfig,
    pem: Vec<u8>,
}

fn certificate() -> Certificate {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let certificate = dir.path().join("gateway.crt");
    let key = dir.path().join("gateway.key");
    std::fs::write(&certificate, made.cert.pem()).expect("write");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
    Certificate {
        tls: TlsConfig {
            certificate: certificate.display().to_string(),
            key: key.display().to_string(),
        },
        pem: made.cert.pem().into_bytes(),
        _dir: dir,
    }
}

fn tls_client(gw: &TestGateway, pem: &[u8], server_name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(gw.address.to_string(), GAME_TOKEN);
    config.tls = Some(ClientTls {
        ca_certificates_pem: pem.to_vec(),
        server_name: server_name.into(),
    });
    config.connect_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn clients_talk_to_a_tls_gateway_and_plain_or_mistrusting_ones_cannot() {
    let servers = common::servers(1);
    let cert = certificate();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.tls = Some(cert.tls.clone());
    let gw = TestGateway::start(&config).await.expect("starts");

    let client = Client::connect(tls_client(&gw, &cert.pem, "localhost"))
        .await
        .expect("TLS client connects");
    client.ping().await.expect("pong over TLS");
    let me = pid("tls-player");
    let txn = Envelope::acting_for(
        me.clone(),
        Transaction::owner(me, Some(client.next_key())).with(Operation::SetField {
            name: name("a"),
            value: b"secret".to_vec(),
            visibility: Visibility::Private,
        }),
    );
    assert_eq!(client.execute(txn).await.expect("commits").version, 1);

    let mut plain = ClientConfig::new(gw.address.to_string(), GAME_TOKEN);
    plain.connect_timeout = Duration::from_secs(5);
    // The TLS server's alert is no frame (a final error, not one to retry), unless the
    // connection is gone before the client reads it.
    let plain = Client::connect(plain).await;
    assert!(
        matches!(plain, Err(Error::Internal(ref m)) if m.contains("bad frame"))
            || matches!(plain, Err(Error::Unavailable { ref reason, .. }) if reason.contains("closed")),
        "plain TCP must not reach a TLS gateway: {:?}",
        plain.err()
    );

    let wrong_name = Client::connect(tls_client(&gw, &cert.pem, "gateway.example.org")).await;
    assert!(
        matches!(wrong_name, Err(Error::Unavailable { .. })),
        "name mismatch must fail"
    );

    let other = certificate();
    let untrusted = Client::connect(tls_client(&gw, &other.pem, "localhost")).await;
    assert!(
        matches!(untrusted, Err(Error::Unavailable { ref reason, .. }) if reason.contains("TLS")),
        "a certificate from another CA must not be trusted: {:?}",
        untrusted.err()
    );

    client.ping().await.expect("the good client is unaffected");
}

#[test]
fn bad_certificate_files_stop_the_gateway_from_starting() {
    let server = RedisServer::start().expect("starts");
    let cert = certificate();
    let cases = [
        TlsConfig {
            certificate: "/nonexistent/gateway.crt".into(),
            key: cert.tls.key.clone(),
        },
        TlsConfig {
            certificate: cert.tls.certificate.clone(),
            key: cert.tls.certificate.clone(),
        },
        TlsConfig {
            certificate: cert.tls.key.clone(),
            key: cert.tls.key.clone(),
        },
    ];
    for tls in cases {
        let mut config = gateway_config(&[&server]);
        config.gateway.tls = Some(tls.clone());
        match Gateway::new(&config) {
            Err(colony::error::StartupError::Tls(message)) => {
                assert!(
                    message.contains("certificate") || message.contains("key"),
                    "{message}"
                )
            }
            Err(e) => panic!("{tls:?}: unexpected error {e:?}"),
            Ok(_) => panic!("{tls:?}: accepted"),
        }
    }
}
