//! `keelson-bench authz`: what the security chain costs a request. Two clusters with the same
//! objects (1,000 Roles and 1,000 RoleBindings over 100 namespaces, for other users), one with
//! `--authorization-mode=AlwaysAllow` and no audit, one as `keelson up` runs by default
//! (`Node,RBAC`, audit at Metadata), both running at once. A user of its own client certificate
//! (not `system:masters`, which RBAC never evaluates), allowed by one RoleBinding, creates and
//! then gets pods one at a time, each operation on one cluster then the other; the p50s are
//! compared.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::{row, start_cluster_with};

/// Flags of `keelson-bench authz`.
#[derive(clap::Args, Debug)]
pub struct AuthzArgs {
    /// The keelson binary used to start the clusters (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Roles (and as many RoleBindings) for other users.
    #[arg(long, default_value_t = 1000)]
    roles: usize,
    /// Pod gets and creates, each, one at a time.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Auditing of the chain-on cluster (`metadata` as `keelson up` runs, or `none` to see
    /// authorization alone).
    #[arg(long, default_value = "metadata", value_parser = ["metadata", "none"])]
    audit: String,
}

/// A client from a kubeconfig file.
pub(crate) async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?)
}

/// A kubeconfig for `user` (`keelson kubeconfig user`), written next to the admin's.
fn user_kubeconfig(keelson: &Path, admin_kubeconfig: &Path, user: &str) -> anyhow::Result<PathBuf> {
    let data = admin_kubeconfig.parent().context("data dir")?;
    let out = std::process::Command::new(keelson)
        .args(["kubeconfig", "user", "--client-name", user, "--data-dir"])
        .arg(data)
        .output()
        .context("running keelson kubeconfig user")?;
    anyhow::ensure!(
        out.status.success(),
        "keelson kubeconfig user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = data.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, out.stdout)?;
    Ok(path)
}

/// A cluster of `mode`, set up and warmed: the measured user's pod API in `bench`.
async fn prepare(
    args: &AuthzArgs,
    keelson: &Path,
    mode: &str,
) -> anyhow::Result<(crate::Cluster, Api<Pod>)> {
    // Off: no authorization, no audit. On: the whole chain as `keelson up` runs it.
    let audit = if mode == "AlwaysAllow" {
        "none"
    } else {
        args.audit.as_str()
    };
    let cluster = start_cluster_with(
        keelson,
        1,
        &["--authorization-mode", mode, "--audit", audit],
    )?;
    let admin = client(&cluster.kubeconfig).await?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let spaces = 100.min(args.roles.max(1));
    for ns in (0..spaces)
        .map(|i| format!("rbac-{i}"))
        .chain(["bench".to_string()])
    {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    for i in 0..args.roles {
        let ns = format!("rbac-{}", i % spaces);
        let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": format!("role-{i}")},
                    "rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "deployments", "configmaps"],
                               "verbs": ["get", "list", "watch", "create"]}]}))?,
            )
            .await?;
        let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": format!("binding-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{i}")},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("user-{i}")},
                                 {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": format!("group-{}", i % 10)}]}))?,
            )
            .await?;
    }
    let roles: Api<Role> = Api::namespaced(admin.clone(), "bench");
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create"]}]}))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "bench");
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench-user"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-user"}]}))?,
        )
        .await?;
    let user = client(&user_kubeconfig(
        keelson,
        &cluster.kubeconfig,
        "bench-user",
    )?)
    .await?;
    let pods: Api<Pod> = Api::namespaced(user, "bench");
    // Warm-up (and the RBAC policy seeing the binding): until the user's create succeeds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut warm = 0;
    while warm < 50 {
        match pods
            .create(&PostParams::default(), &pod(format!("warm-{warm}")))
            .await
        {
            Ok(_) => warm += 1,
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e).context("bench-user cannot create pods");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Ok((cluster, pods))
}

fn pod(name: String) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "pause"}]}}))
    .expect("a valid pod")
}

/// Runs the comparison and prints a markdown table.
pub async fn run(args: AuthzArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let mut report = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    // Both clusters run side by side and take requests in turn, so both see the same machine
    // at the same moment (cluster-to-cluster start-up differences otherwise move p50 by ±15 %).
    let (_off_cluster, off) = prepare(&args, &keelson, "AlwaysAllow").await?;
    let (_on_cluster, on) = prepare(&args, &keelson, "Node,RBAC").await?;
    let hist =
        || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    let mut p50s = [[0u64; 2]; 2];
    for (phase, op) in ["pod create", "pod get"].into_iter().enumerate() {
        let (mut h, mut el, mut errors) =
            ([hist(), hist()], [std::time::Duration::ZERO; 2], [0; 2]);
        for i in 0..args.ops {
            for (side, api) in [&off, &on].into_iter().enumerate() {
                let start = std::time::Instant::now();
                let ok = if phase == 0 {
                    api.create(&PostParams::default(), &pod(format!("pod-{i}")))
                        .await
                        .is_ok()
                } else {
                    api.get(&format!("pod-{}", i % args.ops.max(1)))
                        .await
                        .is_ok()
                };
                let d = start.elapsed();
                el[side] += d;
                let _ = h[side].record(d.as_micros().max(1) as u64);
                if !ok {
                    errors[side] += 1;
                }
            }
        }
        for (side, mode) in ["AlwaysAllow", "Node,RBAC"].into_iter().enumerate() {
            report.push(row(
                &format!("{mode}: {op}"),
                args.ops,
                el[side],
                &h[side],
                errors[side],
            ));
            p50s[side][phase] = h[side].value_at_quantile(0.5);
        }
    }
    println!("{}", report.join("\n"));
    let added = |i: usize| (p50s[1][i] as f64 / p50s[0][i].max(1) as f64 - 1.0) * 100.0;
    println!(
        "\np50 µs: create {} -> {} ({:+.1} %), get {} -> {} ({:+.1} %)",
        p50s[0][0],
        p50s[1][0],
        added(0),
        p50s[0][1],
        p50s[1][1],
        added(1)
    );
    Ok(())
}
