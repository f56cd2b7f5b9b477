//! Configuration through the real binary: the TOML file, precedence (flag > BALSA_* variable >
//! file > default), and the errors a user meets: bad keys, ports in use, another cluster's data
//! dir, a member missing from --initial-cluster.

mod common;

use std::time::Duration;

use common::*;

/// A `balsa server` command with no BALSA_* variables inherited from the environment.
fn server() -> std::process::Command {
    let mut c = balsa();
    for (k, _) in std::env::vars() {
        if k.starts_with("BALSA_") {
            c.env_remove(k);
        }
    }
    c.arg("server");
    c
}

#[test]
fn file_values_lose_to_environment_which_loses_to_flags() {
    let dir = TempDir::new("precedence");
    let file = dir.join("balsa.toml");
    // Each source names a different malformed client URL: the error shows which one won.
    std::fs::write(&file, "listen-client-urls = \"from-file\"\n").unwrap();
    let f = file.to_str().unwrap();
    fails_with(server().args(["--config-file", f]), "\"from-file\" is not an http://host:port URL");
    fails_with(
        server().args(["--config-file", f]).env("BALSA_LISTEN_CLIENT_URLS", "from-env"),
        "\"from-env\" is not an http://host:port URL",
    );
    fails_with(
        server()
            .args(["--config-file", f, "--listen-client-urls", "from-flag"])
            .env("BALSA_LISTEN_CLIENT_URLS", "from-env"),
        "\"from-flag\" is not an http://host:port URL",
    );
    // The file may itself be named by a variable.
    fails_with(server().env("BALSA_CONFIG_FILE", f), "\"from-file\" is not an http://host:port URL");
}

#[test]
fn bad_config_files_name_the_key() {
    let dir = TempDir::new("badfile");
    let file = dir.join("balsa.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "name = \"a\"\nlisten-client-url = \"http://127.0.0.1:1\"\n").unwrap();
    fails_with(server().args(["--config-file", f]), "unknown field `listen-client-url`");
    std::fs::write(&file, "tick-ms = \"fast\"\n").unwrap();
    let err = fails_with(server().args(["--config-file", f]), "invalid type: string \"fast\", expected u64");
    assert!(err.contains("tick-ms"), "the message names the key: {err}");
    std::fs::write(&file, "log-level = \"loud\"\n").unwrap();
    fails_with(
        server().args(["--config-file", f]),
        "--log-level \"loud\": expected error, warn, info, debug or trace",
    );
    fails_with(server().args(["--config-file", dir.join("missing.toml").to_str().unwrap()]), "missing.toml");
    std::fs::write(&file, "name = \n").unwrap();
    fails_with(server().args(["--config-file", f]), "--config-file");
}

#[test]
fn a_server_runs_from_a_config_file() {
    if !has_etcdctl() {
        return;
    }
    let dir = TempDir::new("fromfile");
    let (client, peer) = (free_port(), free_port());
    let file = dir.join("balsa.toml");
    let data = dir.join("data");
    std::fs::write(
        &file,
        format!(
            "# etcd's flag names as keys\nname = \"solo\"\ndata-dir = {data:?}\n\
             listen-client-urls = \"http://127.0.0.1:{client}\"\n\
             listen-peer-urls = \"http://127.0.0.1:{peer}\"\ntick-ms = 20\n\
             initial-cluster-token = \"file-cluster\"\nlog-level = \"warn\"\n"
        ),
    )
    .unwrap();
    let child = server().args(["--config-file", file.to_str().unwrap()]).spawn().unwrap();
    let _p = Proc(child);
    let ep = format!("127.0.0.1:{client}");
    eventually(Duration::from_secs(15), "a write", || {
        etcdctl(&ep, &["put", "from", "file"]).filter(|o| o.trim() == "OK")
    });
    let cluster = std::fs::read_to_string(data.join("cluster")).unwrap();
    assert!(cluster.contains("name = \"solo\""), "the name comes from the file: {cluster}");
}

#[test]
fn ports_in_use_name_the_flag_and_address() {
    let dir = TempDir::new("ports");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = dir.join("d");
    let url = format!("http://127.0.0.1:{port}");
    let free = || format!("http://127.0.0.1:{}", free_port());
    fails_with(
        server().args([
            "--data-dir",
            d.to_str().unwrap(),
            "--listen-peer-urls",
            &url,
            "--listen-client-urls",
            &free(),
        ]),
        &format!("--listen-peer-urls 127.0.0.1:{port}: Address already in use"),
    );
    fails_with(
        server()
            .args([
                "--data-dir",
                d.to_str().unwrap(),
                "--listen-peer-urls",
                &free(),
                "--listen-client-urls",
                &free(),
            ])
            .args(["--listen-metrics-urls", &url]),
        &format!("--listen-metrics-urls 127.0.0.1:{port}: Address already in use"),
    );
}

#[test]
fn unknown_members_and_mismatched_peer_urls_are_refused() {
    fails_with(
        server().args([
            "--name",
            "x",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381",
        ]),
        "--name \"x\" is not in --initial-cluster",
    );
    fails_with(
        server().args([
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,a=http://127.0.0.1:2381",
        ]),
        "member \"a\" is named twice",
    );
    fails_with(
        server()
            .args(["--name", "a", "--initial-cluster", "a=http://127.0.0.1:7000"])
            .args(["--listen-peer-urls", "http://127.0.0.1:7001"]),
        "--initial-cluster has a=http://127.0.0.1:7000 but --listen-peer-urls is http://127.0.0.1:7001",
    );
}

/// Starts a single member on `data` and waits until it serves (so it claimed the data dir), then
/// stops it.
fn found(data: &std::path::Path, token: &str) {
    let client = free_port();
    let child = server()
        .args(["--data-dir", data.to_str().unwrap(), "--initial-cluster-token", token, "--tick-ms", "20"])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    eventually(Duration::from_secs(10), "serving", || http_get(client, "/health"));
    assert!(data.join("cluster").exists());
    assert!(p.terminate());
}

#[test]
fn a_data_dir_of_another_cluster_or_member_is_refused() {
    let dir = TempDir::new("foreign");
    let data = dir.join("data");
    found(&data, "first");
    // Same data dir, another cluster token.
    let err = fails_with(
        server()
            .args(["--data-dir", data.to_str().unwrap(), "--initial-cluster-token", "second"])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())]),
        "belongs to cluster",
    );
    assert!(err.contains("--initial-cluster-token \"second\""), "{err}");
    // Same cluster, but another member's name.
    let peer = free_port();
    fails_with(
        server()
            .args(["--data-dir", data.to_str().unwrap(), "--initial-cluster-token", "first", "--name", "b"])
            .args(["--initial-cluster", &format!("a=http://127.0.0.1:1,b=http://127.0.0.1:{peer}")])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")]),
        "as member \"default\", but this configuration is cluster",
    );
    // The original settings still start.
    found(&data, "first");
}
