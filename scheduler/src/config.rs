//! `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1): reading the file, checking
//! it, and building one [`Framework`] per profile with upstream's plugin-set semantics
//! (multiPoint defaults, per-point enable/disable, score weights, pluginConfig args).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use crate::framework::{Event, Framework, Handle, Plugin, Point};
use crate::plugins;

/// The configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulerConfiguration {
    /// Must be `kubescheduler.config.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// Must be `KubeSchedulerConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// Filter/score parallelism (accepted; this scheduler filters on one thread per cycle).
    pub parallelism: Option<i64>,
    /// API connection.
    pub client_connection: Option<ClientConnection>,
    /// Leader election.
    pub leader_election: Option<LeaderElection>,
    /// Global percentage of nodes to score.
    pub percentage_of_nodes_to_score: Option<i64>,
    /// Initial backoff of unschedulable pods.
    pub pod_initial_backoff_seconds: Option<i64>,
    /// Maximum backoff of unschedulable pods.
    pub pod_max_backoff_seconds: Option<i64>,
    /// Profiles.
    #[serde(default)]
    pub profiles: Vec<Profile>,
    /// Accepted and ignored.
    pub enable_profiling: Option<bool>,
    /// Accepted and ignored.
    pub enable_contention_profiling: Option<bool>,
    /// Accepted and ignored.
    pub delay_cache_until_active: Option<bool>,
    /// Extenders are not supported; an empty list is accepted.
    pub extenders: Option<Vec<serde_json::Value>>,
}

/// `clientConnection`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnection {
    /// Path to a kubeconfig.
    pub kubeconfig: Option<String>,
    /// QPS.
    pub qps: Option<f64>,
    /// Burst.
    pub burst: Option<u32>,
    /// Accepted and ignored.
    pub accept_content_types: Option<String>,
    /// Accepted and ignored.
    pub content_type: Option<String>,
}

/// `leaderElection`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElection {
    /// Whether to elect.
    pub leader_elect: Option<bool>,
    /// e.g. `15s`.
    pub lease_duration: Option<String>,
    /// e.g. `10s`.
    pub renew_deadline: Option<String>,
    /// e.g. `2s`.
    pub retry_period: Option<String>,
    /// Only `leases`.
    pub resource_lock: Option<String>,
    /// Lease name.
    pub resource_name: Option<String>,
    /// Lease namespace.
    pub resource_namespace: Option<String>,
}

/// A profile.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    /// Pods choose the profile by `spec.schedulerName`.
    pub scheduler_name: Option<String>,
    /// Per-profile percentage of nodes to score.
    pub percentage_of_nodes_to_score: Option<i64>,
    /// Plugin sets.
    pub plugins: Option<Plugins>,
    /// Plugin args.
    #[serde(default)]
    pub plugin_config: Vec<PluginConfig>,
}

/// Enabled/disabled plugins per extension point.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Plugins {
    pub multi_point: Option<PluginSet>,
    pub pre_enqueue: Option<PluginSet>,
    pub queue_sort: Option<PluginSet>,
    pub pre_filter: Option<PluginSet>,
    pub filter: Option<PluginSet>,
    pub post_filter: Option<PluginSet>,
    pub pre_score: Option<PluginSet>,
    pub score: Option<PluginSet>,
    pub reserve: Option<PluginSet>,
    pub permit: Option<PluginSet>,
    pub pre_bind: Option<PluginSet>,
    pub bind: Option<PluginSet>,
    pub post_bind: Option<PluginSet>,
}

impl Plugins {
    fn at(&self, p: Point) -> Option<&PluginSet> {
        match p {
            Point::PreEnqueue => self.pre_enqueue.as_ref(),
            Point::QueueSort => self.queue_sort.as_ref(),
            Point::PreFilter => self.pre_filter.as_ref(),
            Point::Filter => self.filter.as_ref(),
            Point::PostFilter => self.post_filter.as_ref(),
            Point::PreScore => self.pre_score.as_ref(),
            Point::Score => self.score.as_ref(),
            Point::Reserve => self.reserve.as_ref(),
            Point::Permit => self.permit.as_ref(),
            Point::PreBind => self.pre_bind.as_ref(),
            Point::Bind => self.bind.as_ref(),
            Point::PostBind => self.post_bind.as_ref(),
        }
    }
}

/// `enabled` / `disabled` lists.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginSet {
    /// Plugins to enable (in order).
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    /// Plugins to disable (`*`: all defaults).
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

/// A plugin name with an optional score weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Name.
    pub name: String,
    /// Score weight.
    pub weight: Option<i64>,
}

/// Args for one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin.
    pub name: String,
    /// Its args (the `<Plugin>Args` kinds).
    pub args: Option<serde_json::Value>,
}

/// Reads and checks a configuration file.
pub fn load(path: &std::path::Path) -> Result<SchedulerConfiguration, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses and checks configuration text.
pub fn parse(text: &str) -> Result<SchedulerConfiguration, String> {
    let c: SchedulerConfiguration = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if c.api_version != "kubescheduler.config.k8s.io/v1" {
        return Err(format!(
            "apiVersion: Unsupported value: {:?}: supported values: \"kubescheduler.config.k8s.io/v1\"",
            c.api_version
        ));
    }
    if c.kind != "KubeSchedulerConfiguration" {
        return Err(format!(
            "kind: Unsupported value: {:?}: supported values: \"KubeSchedulerConfiguration\"",
            c.kind
        ));
    }
    if let Some(p) = c.percentage_of_nodes_to_score
        && !(0..=100).contains(&p)
    {
        return Err(format!(
            "percentageOfNodesToScore: Invalid value: {p}: not in valid range [0-100]"
        ));
    }
    let ib = c.pod_initial_backoff_seconds.unwrap_or(1);
    let mb = c.pod_max_backoff_seconds.unwrap_or(10);
    if ib <= 0 {
        return Err(format!(
            "podInitialBackoffSeconds: Invalid value: {ib}: must be greater than 0"
        ));
    }
    if mb < ib {
        return Err(format!(
            "podMaxBackoffSeconds: Invalid value: {mb}: must be greater than or equal to PodInitialBackoffSeconds"
        ));
    }
    if c.extenders.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("extenders: Forbidden: scheduler extenders are not supported".into());
    }
    let mut names = HashSet::new();
    for (i, p) in c.profiles.iter().enumerate() {
        let n = p.scheduler_name.as_deref().unwrap_or("default-scheduler");
        if n.is_empty() {
            return Err(format!("profiles[{i}].schedulerName: Required value"));
        }
        if !names.insert(n.to_string()) {
            return Err(format!(
                "profiles[{i}].schedulerName: Duplicate value: {n:?}"
            ));
        }
        if let Some(pct) = p.percentage_of_nodes_to_score
            && !(0..=100).contains(&pct)
        {
            return Err(format!(
                "profiles[{i}].percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"
            ));
        }
        let mut seen = HashSet::new();
        for (j, pc) in p.plugin_config.iter().enumerate() {
            if !seen.insert(pc.name.clone()) {
                return Err(format!(
                    "profiles[{i}].pluginConfig[{j}]: Duplicate value: {:?}",
                    pc.name
                ));
            }
        }
    }
    Ok(c)
}

/// Builds the frameworks of all profiles (the default profile when there are none).
pub fn frameworks(c: &SchedulerConfiguration, handle: &Handle) -> Result<Vec<Framework>, String> {
    let default = [Profile::default()];
    let profiles: &[Profile] = if c.profiles.is_empty() {
        &default
    } else {
        &c.profiles
    };
    let mut out: Vec<Framework> = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let fw = build_profile(p, c, handle).map_err(|e| format!("profiles[{i}].{e}"))?;
        if let Some(first) = out.first()
            && first.queue_sort.name() != fw.queue_sort.name()
        {
            return Err(format!(
                "profiles[{i}].plugins.queueSort: Invalid value: {:?}: queueSort must be the same for all profiles",
                fw.queue_sort.name()
            ));
        }
        out.push(fw);
    }
    Ok(out)
}

/// The plugins (with score weights) enabled at each extension point.
type PerPoint = HashMap<Point, Vec<(Arc<dyn Plugin>, i64)>>;

fn build_profile(
    p: &Profile,
    c: &SchedulerConfiguration,
    handle: &Handle,
) -> Result<Framework, String> {
    let empty = Plugins::default();
    let plugins = p.plugins.as_ref().unwrap_or(&empty);
    let args: HashMap<&str, &serde_json::Value> = p
        .plugin_config
        .iter()
        .filter_map(|pc| Some((pc.name.as_str(), pc.args.as_ref()?)))
        .collect();
    // multiPoint: defaults, minus disabled, plus enabled (an enabled one replaces its default).
    let mut multi: Vec<(String, i64)> = Vec::new();
    let mp = plugins.multi_point.clone().unwrap_or_default();
    let all_off = mp.disabled.iter().any(|d| d.name == "*");
    for (name, w) in plugins::DEFAULTS {
        if all_off || mp.disabled.iter().any(|d| d.name == *name) {
            continue;
        }
        multi.push((name.to_string(), *w));
    }
    for (j, e) in mp.enabled.iter().enumerate() {
        multi.retain(|(n, _)| *n != e.name);
        let w = e.weight.unwrap_or_else(|| default_weight(&e.name));
        check_weight(w).map_err(|m| format!("plugins.multiPoint.enabled[{j}].weight: {m}"))?;
        multi.push((e.name.clone(), w));
    }
    let mut instances: HashMap<String, Arc<dyn Plugin>> = HashMap::new();
    let mut instance = |name: &str, field: &str| -> Result<Arc<dyn Plugin>, String> {
        if let Some(p) = instances.get(name) {
            return Ok(p.clone());
        }
        let pl = plugins::build(name, args.get(name).copied(), handle).map_err(|e| {
            if e.contains("does not exist") || e.contains("not implemented") {
                format!("{field}: Invalid value: {name:?}: {e}")
            } else {
                format!("pluginConfig[{name}].args.{e}")
            }
        })?;
        instances.insert(name.to_string(), pl.clone());
        Ok(pl)
    };
    let mut per_point: PerPoint = HashMap::new();
    for (j, (name, w)) in multi.iter().enumerate() {
        let pl = instance(name, &format!("plugins.multiPoint.enabled[{j}]"))?;
        for pt in pl.points() {
            per_point.entry(*pt).or_default().push((pl.clone(), *w));
        }
    }
    for pt in Point::ALL {
        let Some(set) = plugins.at(pt) else { continue };
        let list = per_point.entry(pt).or_default();
        if set.disabled.iter().any(|d| d.name == "*") {
            list.clear();
        }
        list.retain(|(pl, _)| !set.disabled.iter().any(|d| d.name == pl.name()));
        for (j, e) in set.enabled.iter().enumerate() {
            let field = format!("plugins.{}.enabled[{j}]", pt.config_name());
            let pl = instance(&e.name, &field)?;
            if !pl.points().contains(&pt) {
                return Err(format!(
                    "{field}: Invalid value: {:?}: plugin does not implement {}",
                    e.name,
                    pt.config_name()
                ));
            }
            let w = e.weight.unwrap_or_else(|| default_weight(&e.name));
            check_weight(w).map_err(|m| format!("{field}.weight: {m}"))?;
            list.retain(|(p, _)| p.name() != e.name);
            list.push((pl, w));
        }
    }
    let take = |pt: Point, per_point: &PerPoint| {
        per_point
            .get(&pt)
            .map(|v| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let qs = take(Point::QueueSort, &per_point);
    if qs.len() != 1 {
        return Err(format!(
            "plugins.queueSort: Invalid value: {}: only one queue sort plugin can be enabled",
            qs.len()
        ));
    }
    let bind = take(Point::Bind, &per_point);
    if bind.is_empty() {
        return Err("plugins.bind: Invalid value: at least one bind plugin is needed".into());
    }
    let pct = p
        .percentage_of_nodes_to_score
        .or(c.percentage_of_nodes_to_score)
        .filter(|p| *p > 0)
        .map(|p| p as u32);
    let mut interest: HashMap<Event, HashSet<&'static str>> = HashMap::new();
    for pl in instances.values() {
        for e in pl.events() {
            interest.entry(*e).or_default().insert(pl.name());
        }
    }
    Ok(Framework {
        scheduler_name: p
            .scheduler_name
            .clone()
            .unwrap_or_else(|| "default-scheduler".into()),
        pre_enqueue: take(Point::PreEnqueue, &per_point),
        queue_sort: qs[0].clone(),
        pre_filter: take(Point::PreFilter, &per_point),
        filter: take(Point::Filter, &per_point),
        post_filter: take(Point::PostFilter, &per_point),
        pre_score: take(Point::PreScore, &per_point),
        score: per_point.get(&Point::Score).cloned().unwrap_or_default(),
        reserve: take(Point::Reserve, &per_point),
        permit: take(Point::Permit, &per_point),
        pre_bind: take(Point::PreBind, &per_point),
        bind,
        post_bind: take(Point::PostBind, &per_point),
        percentage_of_nodes_to_score: pct,
        interest,
    })
}

fn default_weight(name: &str) -> i64 {
    plugins::DEFAULTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| (*w).max(1))
        .unwrap_or(1)
}

fn check_weight(w: i64) -> Result<(), String> {
    if (1..=100).contains(&w) {
        Ok(())
    } else {
        Err(format!("Invalid value: {w}: must be in the range [1, 100]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Listers;

    fn handle() -> Handle {
        Handle {
            client: None,
            listers: Listers::empty(),
        }
    }

    #[test]
    fn default_profile_has_upstream_plugins_and_weights() {
        let c =
            parse("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n")
                .unwrap();
        let fws = frameworks(&c, &handle()).unwrap();
        assert_eq!(fws.len(), 1);
        let fw = &fws[0];
        assert_eq!(fw.scheduler_name, "default-scheduler");
        let names = |v: &[Arc<dyn Plugin>]| v.iter().map(|p| p.name()).collect::<Vec<_>>();
        assert_eq!(
            names(&fw.filter),
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeRestrictions",
                "VolumeBinding",
                "VolumeZone",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        let w: HashMap<_, _> = fw.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(w["TaintToleration"], 3);
        assert_eq!(w["ImageLocality"], 1);
        assert_eq!(w["InterPodAffinity"], 2);
        assert_eq!(w["NodeResourcesFit"], 1);
        assert_eq!(names(&fw.bind), ["DefaultBinder"]);
        assert_eq!(names(&fw.post_filter), ["DefaultPreemption"]);
    }

    #[test]
    fn profiles_enable_disable_and_args() {
        let c = parse(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: bin-packer
  plugins:
    score:
      disabled: [{name: "*"}]
      enabled: [{name: NodeResourcesFit, weight: 5}]
    postFilter:
      disabled: [{name: DefaultPreemption}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy: {type: MostAllocated}
"#,
        )
        .unwrap();
        let fw = &frameworks(&c, &handle()).unwrap()[0];
        assert_eq!(fw.scheduler_name, "bin-packer");
        assert_eq!(fw.score.len(), 1);
        assert_eq!(fw.score[0].0.name(), "NodeResourcesFit");
        assert_eq!(fw.score[0].1, 5);
        assert!(fw.post_filter.is_empty());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n";
        let e = parse(&format!(
            "{base}profiles:\n- schedulerName: a\n  plugns: {{}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `plugns`"), "{e}");
        let e = parse(&format!("{base}percentageOfNodesToScore: 140\n")).unwrap_err();
        assert!(e.starts_with("percentageOfNodesToScore"), "{e}");
        let e = parse("apiVersion: v1\nkind: KubeSchedulerConfiguration\n").unwrap_err();
        assert!(e.starts_with("apiVersion"), "{e}");
        let c = parse(&format!(
            "{base}profiles:\n- plugins:\n    filter:\n      enabled: [{{name: NoSuch}}]\n"
        ))
        .unwrap();
        let e = frameworks(&c, &handle()).err().unwrap();
        assert!(
            e.starts_with("profiles[0].plugins.filter.enabled[0]"),
            "{e}"
        );
        assert!(e.contains("does not exist"), "{e}");
        let c = parse(&format!(
            "{base}profiles:\n- pluginConfig:\n  - name: NodeResourcesFit\n    args: {{scoringStrategy: {{type: Bogus}}}}\n"
        ))
        .unwrap();
        let e = frameworks(&c, &handle()).err().unwrap();
        assert!(e.contains("scoringStrategy.type"), "{e}");
        let c = parse(&format!(
            "{base}profiles:\n- plugins:\n    score:\n      enabled: [{{name: NodeAffinity, weight: 0}}]\n"
        ))
        .unwrap();
        assert!(frameworks(&c, &handle()).is_err());
    }
}
