//! Watches a real Redis run scripts and checks the rule a Redis Cluster needs: every key a
//! script touches is declared in its `KEYS`, and a call's declared keys lie in one slot (a
//! script touching an undeclared key of a slot that is moving fails half-way, its earlier
//! writes kept).
//!
//! `redis-cli MONITOR` shows each command a script runs (`[0 lua]` lines, right after the
//! `EVALSHA` that ran it: Redis is single-threaded), and `COMMAND GETKEYS` says which of its
//! arguments are keys, by Redis's own key specs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony::slot::key_slot;

use crate::redis_server::RedisServer;
use crate::wait::wait_for;

/// `MONITOR` on one server, from [`ScriptWatch::start`] to [`ScriptWatch::finish`].
pub struct ScriptWatch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    url: String,
}

/// What a watch saw.
#[derive(Debug, Clone, Default)]
pub struct ScriptReport {
    /// The SHA1 of every script that ran.
    pub scripts: BTreeSet<String>,
    /// Keys touched by scripts, each checked against its call's `KEYS`.
    pub checked: usize,
    /// Every breach of the rule, one line each with the `MONITOR` line that showed it.
    pub violations: Vec<String>,
}

/// How long `MONITOR` may take to start, and its lines to arrive.
const MONITOR_DEADLINE: Duration = Duration::from_secs(10);

impl ScriptWatch {
    /// Starts `MONITOR` on `server` and waits until it runs.
    pub async fn start(server: &RedisServer) -> std::io::Result<ScriptWatch> {
        let mut child = Command::new("redis-cli")
            .args(["-p", &server.port().to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            })
        };
        let watch = ScriptWatch {
            child,
            lines,
            reader: Some(reader),
            url: server.url(),
        };
        if watch.saw(|l| l == "OK").await {
            Ok(watch)
        } else {
            Err(std::io::Error::other("MONITOR did not start"))
        }
    }

    async fn saw(&self, matches: impl Fn(&str) -> bool) -> bool {
        wait_for(MONITOR_DEADLINE, || async {
            self.lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|l| matches(l))
                .then_some(())
        })
        .await
        .is_some()
    }

    /// Stops watching (once every line of what ran before arrived) and checks every script
    /// command seen.
    pub async fn finish(mut self) -> std::io::Result<ScriptReport> {
        let mut conn = redis::Client::open(self.url.as_str())
            .map_err(std::io::Error::other)?
            .get_multiplexed_async_connection()
            .await
            .map_err(std::io::Error::other)?;
        let marker = "script-watch-end";
        let _: String = redis::cmd("ECHO")
            .arg(marker)
            .query_async(&mut conn)
            .await
            .map_err(std::io::Error::other)?;
        if !self.saw(|l| l.contains(marker)).await {
            return Err(std::io::Error::other("MONITOR's lines did not arrive"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut report = ScriptReport::default();
        let mut declared: Option<Vec<Vec<u8>>> = None;
        for line in &lines {
            let Some((lua, args)) = parse(line) else {
                continue;
            };
            let Some(command) = args.first() else {
                continue;
            };
            if !lua {
                declared = None;
                if command.eq_ignore_ascii_case(b"EVALSHA") || command.eq_ignore_ascii_case(b"EVAL")
                {
                    let count: usize = args
                        .get(2)
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let keys: Vec<Vec<u8>> = args.iter().skip(3).take(count).cloned().collect();
                    let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k).get()).collect();
                    if slots.len() > 1 {
                        report
                            .violations
                            .push(format!("declares keys of {} slots: {line}", slots.len()));
                    }
                    report
                        .scripts
                        .insert(String::from_utf8_lossy(&args[1]).to_string());
                    declared = Some(keys);
                }
                continue;
            }
            let Some(declared) = declared.as_ref() else {
                report.violations.push(format!(
                    "a script command with no EVALSHA before it: {line}"
                ));
                continue;
            };
            if args.len() < 2 {
                // A command with no arguments at all (TIME) has no keys.
                continue;
            }
            let mut getkeys = redis::cmd("COMMAND");
            getkeys.arg("GETKEYS");
            for arg in &args {
                getkeys.arg(arg.as_slice());
            }
            let touched: Vec<Vec<u8>> = match getkeys.query_async(&mut conn).await {
                Ok(keys) => keys,
                Err(e) if e.to_string().contains("no key arguments") => Vec::new(),
                Err(e) => {
                    report
                        .violations
                        .push(format!("COMMAND GETKEYS failed ({e}): {line}"));
                    continue;
                }
            };
            for key in touched {
                report.checked += 1;
                if !declared.contains(&key) {
                    report.violations.push(format!(
                        "touched {:?}, not among its KEYS: {line}",
                        String::from_utf8_lossy(&key)
                    ));
                }
            }
        }
        Ok(report)
    }
}

impl Drop for ScriptWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `1700000000.1 [0 127.0.0.1:5000] "EVALSHA" "ab" "1" "k"`: whether a script ran it
/// (`[0 lua]`), and each quoted argument with redis-cli's escapes (`\"`, `\\`, `\n`, `\xNN`).
fn parse(line: &str) -> Option<(bool, Vec<Vec<u8>>)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let lua = line[open..close].ends_with(" lua");
    let mut args = Vec::new();
    let bytes = &line.as_bytes()[close + 1..];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                        arg.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[i]);
            }
            i += 1;
        }
        args.push(arg);
        i += 1;
    }
    Some((lua, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_parse_with_their_escapes() {
        let (lua, args) =
            parse(r#"1796389960.1 [0 lua] "HSET" "{a}:meta" "v\x00\"q\\" "1""#).expect("parses");
        assert!(lua);
        assert_eq!(
            args,
            vec![
                b"HSET".to_vec(),
                b"{a}:meta".to_vec(),
                b"v\x00\"q\\".to_vec(),
                b"1".to_vec()
            ]
        );
        let (lua, args) =
            parse(r#"1.2 [0 127.0.0.1:5000] "EVALSHA" "ab" "1" "k""#).expect("parses");
        assert!(!lua);
        assert_eq!(args.len(), 4);
        assert!(parse("OK").is_none());
    }
}
