//! Auth through etcdctl on a three-member cluster: users, roles and key-range permissions,
//! `auth enable`, and what each user may then do with its token (handed out by one member,
//! honoured by all).

use crate::cluster::{Cluster, etcdctl, ok};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn etcdctl_users_roles_and_permissions_once_auth_is_enabled() {
    let c = Cluster::start(3);
    let all: Vec<&str> = c.members.iter().map(|m| m.client.as_str()).collect();
    let all = all.join(",");
    let run = |args: &[&str]| ok(etcdctl(&all, args));

    run(&["user", "add", "root:rootpw"]);
    run(&["role", "add", "app"]);
    run(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "app/",
        "--prefix=true",
    ]);
    run(&["role", "grant-permission", "app", "read", "shared"]);
    run(&["user", "add", "alice:alicepw"]);
    run(&["user", "grant-role", "alice", "app"]);
    run(&["put", "shared", "s"]);
    run(&["put", "secret", "x"]);
    assert!(run(&["user", "get", "alice"]).contains("Roles: app"));
    let role = run(&["role", "get", "app"]);
    assert!(
        role.contains("[app/, app0) (prefix app/)") && role.contains("shared"),
        "{role}"
    );
    assert_eq!(run(&["user", "list"]), "alice\nroot\n");
    let out = etcdctl(&all, &["user", "add", "alice:again"]);
    assert!(
        stderr(&out).contains("user name already exists"),
        "{}",
        stderr(&out)
    );

    // etcdctl creates the root role and grants it to root when enabling needs it.
    assert!(run(&["auth", "enable"]).contains("Authentication Enabled"));

    let out = etcdctl(&all, &["get", "shared"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user name is empty"),
        "{}",
        stderr(&out)
    );
    let out = etcdctl(&all, &["--user=alice:wrong", "get", "shared"]);
    assert!(
        stderr(&out).contains("authentication failed, invalid user ID or password"),
        "{}",
        stderr(&out)
    );

    let alice = |args: &[&str]| {
        let mut a = vec!["--user=alice:alicepw"];
        a.extend_from_slice(args);
        etcdctl(&all, &a)
    };
    assert_eq!(ok(alice(&["put", "app/x", "1"])).trim(), "OK");
    assert_eq!(ok(alice(&["get", "shared"])), "shared\ns\n");
    assert_eq!(ok(alice(&["get", "app/", "--prefix"])), "app/x\n1\n");
    for denied in [
        vec!["put", "shared", "no"],
        vec!["get", "secret"],
        vec!["get", "", "--prefix"],
        vec!["del", "app/", "app0x"],
        vec!["user", "list"],
        vec!["auth", "disable"],
    ] {
        let out = alice(&denied);
        assert!(!out.status.success(), "{denied:?} was allowed");
        assert!(
            stderr(&out).contains("permission denied"),
            "{denied:?}: {}",
            stderr(&out)
        );
    }
    // A transaction is checked on every compare and both branches.
    let out = crate::cluster::etcdctl_stdin(
        &all,
        &["--user=alice:alicepw", "txn"],
        Some("value(\"app/x\") = \"1\"\n\nput app/y 2\n\nput secret 3\n\n"),
    );
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    let root = |args: &[&str]| {
        let mut a = vec!["--user=root:rootpw"];
        a.extend_from_slice(args);
        ok(etcdctl(&all, &a))
    };
    assert_eq!(
        root(&["get", "", "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        3
    );
    root(&["role", "revoke-permission", "app", "shared"]);
    let out = alice(&["get", "shared"]);
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(root(&["auth", "disable"]).contains("Authentication Disabled"));
    assert_eq!(run(&["get", "secret", "--print-value-only"]).trim(), "x");
}

/// A token of `root` (password `pw`) from the member `auth` talks to.
async fn root_token(
    auth: &mut keelson_etcdpb::etcdserverpb::auth_client::AuthClient<tonic::transport::Channel>,
) -> String {
    let credentials = keelson_etcdpb::etcdserverpb::AuthenticateRequest {
        name: "root".into(),
        password: "pw".into(),
    };
    auth.authenticate(credentials)
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Adds `root` (password `pw`) and enables auth, through etcdctl.
async fn enable_auth(endpoint: &str) {
    let e = endpoint.to_string();
    tokio::task::spawn_blocking(move || {
        ok(etcdctl(&e, &["user", "add", "root:pw"]));
        ok(etcdctl(&e, &["auth", "enable"]));
    })
    .await
    .unwrap();
}

/// AuthStatus (etcd 3.5's; etcdctl 3.4 cannot ask): whether auth is on and its revision,
/// which counts the changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_status_reports_the_state_and_its_revision() {
    use keelson_etcdpb::etcdserverpb::AuthStatusRequest;
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    let c = Cluster::start(1);
    let endpoint = c.members[0].client.clone();
    let mut auth = AuthClient::connect(endpoint.clone()).await.unwrap();
    let before = auth
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!before.enabled);
    enable_auth(&endpoint).await;
    let after = auth
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(after.enabled);
    // user add, role add root, grant (not the enable, as etcd's).
    assert_eq!(before.auth_revision, 1);
    assert_eq!(after.auth_revision, before.auth_revision + 3);

    // The state is kept with the data: a restarted member still has it.
    let mut c = c;
    c.kill(0);
    c.start_member(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let restarted = loop {
        if let Ok(mut a) = AuthClient::connect(endpoint.clone()).await
            && let Ok(s) = a.auth_status(AuthStatusRequest {}).await
        {
            break s.into_inner();
        }
        assert!(std::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(restarted.enabled);
    assert_eq!(restarted.auth_revision, after.auth_revision);
    let e = endpoint.clone();
    let users =
        tokio::task::spawn_blocking(move || ok(etcdctl(&e, &["--user=root:pw", "user", "list"])))
            .await
            .unwrap();
    assert_eq!(users, "root\n");
}

/// `--auth-token-ttl`: a simple token stays valid while it is used and expires once it has gone
/// unused for the TTL. `--bcrypt-cost` is accepted; `--auth-token` options etcd refuses are
/// refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_expire_after_the_auth_token_ttl() {
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
    use keelson_etcdpb::etcdserverpb::{PutRequest, RangeRequest};
    use std::time::Duration;

    let c = Cluster::start_with(1, &["--auth-token-ttl=2", "--bcrypt-cost=4"]);
    let endpoint = c.members[0].client.clone();
    enable_auth(&endpoint).await;
    let token = root_token(&mut AuthClient::connect(endpoint.clone()).await.unwrap()).await;
    let mut kv = KvClient::connect(endpoint).await.unwrap();
    let range = |token: &str| {
        let mut r = tonic::Request::new(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        r.metadata_mut().insert("token", token.parse().unwrap());
        r
    };
    // Used every second for four seconds: each use renews it.
    for _ in 0..4 {
        kv.range(range(&token)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Unused for three: gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = kv.range(range(&token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "etcdserver: invalid auth token");
    let mut put = tonic::Request::new(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    put.metadata_mut().insert("token", token.parse().unwrap());
    assert_eq!(
        kv.put(put).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // Refused as etcd refuses them, before anything is made: JWT tokens without a key, and
    // options that are not `key=value` after either type.
    for (flag, error) in [
        ("jwt,sign-method=RS256", "auth: missing key data"),
        ("simple,junk", "auth: invalid auth options"),
        ("simple,a=1,a=2", "auth: invalid auth options"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg("store")
            .arg(format!("--data-dir={}", dir.path().join("d").display()))
            .arg(format!("--auth-token={flag}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {stderr}");
        assert!(stderr.contains(error), "{flag}: {stderr}");
        assert!(!dir.path().join("d").exists(), "{flag}");
    }
}

/// A change to the auth state, or a read of it, is checked in a state at least as new as the
/// request, as etcd's (which checks changes as they apply, in log order). A follower whose
/// applies are held back 300 ms has not applied `auth disable` when its client, answered that
/// the disable is done, asks it for the user list and then for `auth enable` without a token:
/// both are served, as etcd serves them, not refused for a user name the follower's stale
/// state wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_checks_auth_requests_in_an_up_to_date_state() {
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    use keelson_etcdpb::etcdserverpb::{
        AuthDisableRequest, AuthEnableRequest, AuthStatusRequest, AuthUserListRequest,
    };

    use crate::cluster::{before_apply, before_apply_hits};
    use crate::differential::with_token;

    let gofail: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", keelson_client::ports::free_port().unwrap()))
        .collect();
    let c = Cluster::start_each(3, &[], &[], |i| {
        vec![("GOFAIL_HTTP".to_string(), gofail[i].clone())]
    });
    enable_auth(&c.members[0].client).await;
    // A follower (no election is expected while the test runs).
    let f = (c.leader_index().await + 1) % 3;
    let mut auth = AuthClient::connect(c.members[f].client.clone())
        .await
        .unwrap();
    for round in 0..2 {
        // A disable forgets the simple tokens handed out.
        let root = root_token(&mut auth).await;
        before_apply(&gofail[f], "PUT", "sleep(300)");
        auth.auth_disable(with_token(&root, AuthDisableRequest {}))
            .await
            .unwrap();
        let served = if round == 0 {
            auth.user_list(AuthUserListRequest {}).await.map(|_| ())
        } else {
            auth.auth_enable(AuthEnableRequest {}).await.map(|_| ())
        };
        let held = before_apply_hits(&gofail[f]);
        before_apply(&gofail[f], "DELETE", "");
        assert!(
            held.is_some_and(|n| n > 0),
            "the follower's applies were not held"
        );
        let what = ["the user list", "auth enable"][round];
        assert!(served.is_ok(), "{what}: {served:?}");
        if round == 0 {
            auth.auth_enable(AuthEnableRequest {}).await.unwrap();
        }
        let status = auth.auth_status(AuthStatusRequest {}).await.unwrap();
        assert!(status.into_inner().enabled, "{what}");
    }
}
