//! The shipped deploy files agree with Colony: the configurations inside the compose file and
//! the Kubernetes manifests load through Colony's own validation with the environment those
//! files give them, the image builds every binary and runs unprivileged, and every command-line
//! flag the systemd units and manifests pass is one the gateway binary takes. (The files'
//! own syntax is checked with the real tools by `deploy/check.sh`.)

use colony::Config;

fn deploy(path: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// `KEY: value` lines whose key starts with `COLONY__`, as environment variables.
fn colony_env(yaml: &str) -> Vec<(String, String)> {
    yaml.lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once(": ")?;
            key.starts_with("COLONY__")
                .then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The block scalar under `key: |` in `yaml`, without its indentation.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    lines.next().expect("the block's key");
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    body.iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_compose_cluster_configuration_loads_with_its_environment() {
    let compose = deploy("compose/compose.yaml");
    let env = colony_env(&compose);
    assert_eq!(env.len(), 6, "{env:?}");
    let config = Config::from_toml(&deploy("compose/colony.toml"), env).expect("valid");
    assert_eq!(config.shards.len(), 2);
    assert_eq!(config.gateway.tokens.len(), 2);
    assert_eq!(
        config.redis.acknowledge,
        colony::config::Acknowledge::Replicated
    );
    assert!(!config.archive.mongodb_uris.is_empty());
    // Every host the configuration names is a service of the compose file.
    for shard in &config.shards {
        for replica in &shard.replicas {
            let host = replica.split(':').next().expect("host");
            assert!(compose.contains(&format!("  {host}:\n")), "{host}");
        }
    }
    for sentinel in [
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
        "mongo-1",
        "mongo-2",
        "mongo-3",
    ] {
        assert!(compose.contains(&format!("  {sentinel}:\n")), "{sentinel}");
    }
}

#[test]
fn the_compose_redis_cluster_configuration_loads_and_names_its_nodes() {
    let compose = deploy("compose/compose.cluster.yaml");
    let env = colony_env(&compose);
    assert_eq!(env.len(), 6, "{env:?}");
    let config = Config::from_toml(&deploy("compose/colony.cluster.toml"), env).expect("valid");
    assert!(config.shards.is_empty());
    let cluster = config.cluster.as_ref().expect("a [cluster]");
    assert_eq!(
        config.redis.acknowledge,
        colony::config::Acknowledge::Replicated
    );
    assert_eq!(
        config.archive.mongodb_uris.len(),
        1,
        "one MongoDB with a cluster"
    );
    // Every seed is a node of the compose file, and every node a seed and a cluster member
    // with the settings Colony requires.
    let nodes = compose.matches("    <<: *redis-node\n").count();
    assert_eq!(cluster.seeds.len(), nodes);
    let formed = compose
        .lines()
        .find(|l| l.contains("for host in"))
        .expect("the init service's node list");
    for seed in &cluster.seeds {
        let host = seed.split(':').next().expect("host");
        assert!(compose.contains(&format!("  {host}:\n")), "{host}");
        assert!(
            formed.contains(&format!(" {host}")),
            "{host} is not formed: {formed}"
        );
    }
    for setting in [
        "\"--cluster-enabled\", \"yes\"",
        "\"--cluster-require-full-coverage\", \"no\"",
        "\"--min-replicas-to-write\", \"1\"",
    ] {
        assert!(compose.contains(setting), "{setting}");
    }
    assert!(compose.contains("--cluster-replicas 2"));
}

#[test]
fn the_kubernetes_configuration_loads_with_its_secret() {
    let toml = block(&deploy("kubernetes/configmap.yaml"), "colony.toml");
    assert!(toml.contains("[[shards]]"), "{toml}");
    let env = colony_env(&deploy("kubernetes/secret.yaml"));
    let config = Config::from_toml(&toml, env).expect("valid");
    assert_eq!(config.shards.len(), 2);
    assert_eq!(config.gateway.tokens.len(), 2);
    assert_eq!(config.archive.mongodb_uris.len(), 1);
    // The probes' port is the admin listener's.
    assert!(config.gateway.admin_listen.ends_with(":7401"));
    assert!(deploy("kubernetes/gateway.yaml").contains("containerPort: 7401"));
}

#[test]
fn the_kubernetes_redis_cluster_configuration_names_the_statefulsets_nodes() {
    let toml = block(&deploy("kubernetes/cluster/configmap.yaml"), "colony.toml");
    let env = colony_env(&deploy("kubernetes/secret.yaml"));
    let config = Config::from_toml(&toml, env).expect("valid");
    assert!(config.shards.is_empty());
    let seeds = &config.cluster.as_ref().expect("a [cluster]").seeds;
    let manifest = deploy("kubernetes/cluster/redis-cluster.yaml");
    assert!(manifest.contains("  replicas: 9\n"), "nine nodes");
    assert_eq!(seeds.len(), 9);
    for (i, seed) in seeds.iter().enumerate() {
        assert_eq!(
            seed,
            &format!("redis-cluster-{i}.redis-cluster.data.svc.cluster.local:6379")
        );
        // The Job forms the very nodes the gateways are told of.
        let host = seed.split(':').next().expect("host");
        assert!(
            manifest.contains(&format!(" {host}")),
            "{host} is not formed"
        );
    }
    for setting in [
        "--cluster-require-full-coverage\n            - \"no\"",
        "--cluster-replicas 2",
    ] {
        assert!(manifest.contains(setting), "{setting}");
    }
}

#[test]
fn the_image_builds_every_binary_and_runs_unprivileged() {
    let dockerfile = deploy("docker/Dockerfile");
    for binary in [
        "colony-gateway",
        "colony-archiver",
        "colony-loadtest",
        "colony-admin",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "{binary}"
        );
    }
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(dockerfile.contains("--locked"));
}

#[test]
fn every_flag_the_units_and_manifests_pass_is_one_the_gateway_takes() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_colony-gateway"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    // The command lines: ExecStart in the units, args in the manifests, the image's
    // ENTRYPOINT.
    let mut flags = Vec::new();
    for file in [
        "systemd/colony-gateway.service",
        "systemd/colony-archiver.service",
        "kubernetes/gateway.yaml",
        "kubernetes/archiver.yaml",
        "docker/Dockerfile",
    ] {
        let text = deploy(file);
        let lines = text.lines().filter(|l| {
            let l = l.trim();
            l.starts_with("ExecStart=") || l.starts_with("args:") || l.starts_with("ENTRYPOINT")
        });
        for line in lines {
            for word in line.split(|c: char| c.is_whitespace() || "\"[],".contains(c)) {
                if word.starts_with("--") && word.len() > 2 {
                    flags.push((file, word.split('=').next().unwrap_or_default().to_string()));
                }
            }
        }
    }
    assert!(flags.len() >= 6, "{flags:?}");
    for (file, flag) in flags {
        assert!(
            help.contains(&flag),
            "{file} passes {flag}, which colony-gateway does not take:\n{help}"
        );
    }
}
