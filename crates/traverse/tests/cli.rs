#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The operator's commands that start no server: `check-config`, `credentials`, `token`.

mod common;

use std::process::{Command, Output};

fn traverse(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    common::clear_traverse_env(&mut cmd);
    cmd.args(args).output().expect("run traverse")
}

/// `text` in a file called `name`, in a directory of its own (per process and name: the caller removes it).
fn file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("traverse-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_reports_every_error_with_its_key_and_line() {
    let path = file(
        "bad.toml",
        r#"# a file with an error of each kind
[listen]
udp = ["0.0.0.0:3478", "nonsense"]

[relay]
port_min = "forty"
allow_peers = ["10.0.0.0/99"]
colour = "blue"

[limits]
max_connections = -3
idle_timeout = 30

[tls]
cert = "/nonexistent/traverse-test/fullchain.pem"
key = "/nonexistent/traverse-test/privkey.pem"

[auth]
secrets = ["short"]
"#,
    );
    let out = traverse(&["check-config", path.to_str().unwrap()]);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let p = path.display().to_string();
    // Each file error on its own line, `path:line:column: key: message`, in file order.
    let expected = [
        (3, "listen.udp"),
        (6, "relay.port_min"),
        (7, "relay.allow_peers"),
        (8, "relay.colour"),
        (11, "limits.max_connections"),
    ];
    for (line, key) in expected {
        let prefix = format!("{p}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(&format!(": {key}: "))),
            "no error for {key} on line {line} in:\n{stderr}"
        );
    }
    // In the expected form, not Rust's types.
    assert!(
        stderr.contains("got the text \"forty\"; expected a whole number from 0 to 65535 (e.g. port_min = 49152)"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
    assert!(
        !stderr.contains("expected u16") && !stderr.contains("expected usize"),
        "{stderr}"
    );
    // Then the rules the entries that parsed break: missing files, a short secret.
    assert!(
        stderr.contains("tls.cert: cannot read /nonexistent/traverse-test/fullchain.pem"),
        "{stderr}"
    );
    assert!(stderr.contains("tls.key: cannot read"), "{stderr}");
    assert!(
        stderr.contains("auth.secrets: a secret of 5 characters is too short"),
        "{stderr}"
    );
    assert!(stderr.contains("8 error(s)"), "{stderr}");
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traverse.example.toml");
    let out = traverse(&["check-config", example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn short_secrets_are_refused_where_the_server_would_refuse_them() {
    for args in [
        &["token", "--secret", "abcde", "--room", "r"][..],
        &["credentials", "--secret", "abcde", "--user", "u"][..],
    ] {
        let out = traverse(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a 5-character secret");
        assert!(stderr.contains("too short: use at least 16"), "{stderr}");
    }
    let out = traverse(&["token", "--secret", "sixteen-chars-ok", "--room", "r"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn serve_help_is_grouped_by_topic() {
    let out = traverse(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Listeners",
        "TLS:",
        "Credentials:",
        "Signaling:",
        "Relay:",
        "Logging:",
        "Configuration:",
    ] {
        assert!(help.contains(heading), "no {heading} section in:\n{help}");
    }
    // Grouped: the listeners come together, under their heading.
    let listeners = help.find("Listeners").unwrap();
    let tls = help.find("TLS:").unwrap();
    for flag in ["--udp", "--tcp", "--http", "--single-port"] {
        let at = help.find(flag).unwrap();
        assert!(listeners < at && at < tls, "{flag} is not under Listeners:\n{help}");
    }
}

/// `--log-format json`: nothing but JSON on stdout and stderr, no live credential, no colour codes; a bare port
/// listens on every interface of both families; `off` switches a listener off.
#[test]
fn json_logs_are_all_json_and_bare_ports_mean_every_interface() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    common::clear_traverse_env(&mut cmd);
    let port_arg = port.to_string();
    let mut child = cmd
        .args([
            "serve",
            "--udp",
            &port_arg,
            "--tcp",
            "off",
            "--tls",
            "off",
            "--http",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        // Relay ports away from the kernel's ephemeral range, where the free port above came from (the server
        // refuses a relay range holding one of its own listeners).
        .args(["--relay-ports", "61000-61999"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let ready = line.contains("\"ready; credentials");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(line);
    }
    let all = lines.join("\n");
    assert!(all.contains("ready"), "never ready:\n{all}");
    assert!(
        out.stdout.is_empty(),
        "stdout is not empty: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(!all.contains('\x1b'), "colour codes in a pipe:\n{all}");
    assert!(!all.contains("credential\":\""), "a credential was logged:\n{all}");
    assert!(
        all.contains(&format!("0.0.0.0:{port}")) && all.contains(&format!("[::]:{port}")),
        "{all}"
    );
    assert!(
        !all.contains("listening on TCP") && !all.contains("listening on TLS"),
        "{all}"
    );
}

#[test]
fn a_bad_listen_address_says_what_to_write() {
    let out = traverse(&["serve", "--udp", "localhost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("write IP:PORT") && stderr.contains("(3478)"),
        "{stderr}"
    );
}

#[test]
fn a_log_level_that_is_not_one_is_refused_not_silent() {
    // `tracing` would read "warning" as a target and log nothing at all, warnings and errors included.
    let out = traverse(&["serve", "--log-level", "warning"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("log.level") && stderr.contains("did you mean warn?"),
        "{stderr}"
    );
    let path = file("level.toml", "[log]\nlevel = \"debg\"\n");
    let out = traverse(&["check-config", path.to_str().unwrap()]);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"debg\" is not a level"));
}

#[test]
fn a_file_asking_for_json_logs_gets_its_refusal_in_json() {
    let path = file("json.toml", "[log]\nformat = \"json\"\n[limits]\nmax_connections = 0\n");
    let out = traverse(&["serve", "--config", path.to_str().unwrap()]);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "ERROR", "{line}");
    }
    assert!(stderr.contains("limits.max_connections"), "{stderr}");
}

#[test]
fn credentials_and_tokens_refuse_what_would_wrap_or_admit_nothing() {
    let secret = "a-secret-of-enough-length";
    let out = traverse(&["credentials", "--secret", secret, "--ttl", "18446744073709551615"]);
    assert!(!out.status.success(), "a ttl past the clock's range");
    let out = traverse(&["token", "--secret", secret, "--room", ""]);
    assert!(!out.status.success(), "an empty room");
    // No --secret: the server's own variable, the list's first entry, mints (the one the server mints with).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_traverse"));
    common::clear_traverse_env(&mut cmd);
    let out = cmd
        .args(["credentials", "--user", "u", "--ttl", "60"])
        .env("TRAVERSE_SECRETS", format!("{secret},another-secret-0123456789"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let username = v["username"].as_str().unwrap();
    assert_eq!(
        v["password"].as_str().unwrap(),
        turn::rest_password(secret.as_bytes(), username)
    );
}

#[test]
fn a_privileged_port_refused_says_which_capability_it_needs() {
    // Root may bind below 1024: run as nobody then (util-linux's setpriv); anyone else is refused as is.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let bin = env!("CARGO_BIN_EXE_traverse");
    let mut cmd = match root {
        true => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", bin]);
            c
        }
        false => Command::new(bin),
    };
    common::clear_traverse_env(&mut cmd);
    let data = std::env::temp_dir().join(format!("traverse-cli-{}-privileged", std::process::id()));
    let out = cmd
        .args([
            "serve",
            "--udp",
            "off",
            "--tcp",
            "off",
            "--tls",
            "off",
            "--http",
            "127.0.0.1:443",
        ])
        .args(["--set", &format!("web.data_dir={}", data.display())])
        .output()
        .expect("setpriv runs (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot listen on HTTP 127.0.0.1:443") && stderr.contains("CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
}
