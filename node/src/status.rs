//! Pod status as the kubelet reports it: phase, conditions, container statuses, IPs — built from
//! the pod worker's state, keeping transition times of conditions that did not change.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::runtime::{ContainerHandle, Exit};

/// One container as the worker tracks it.
#[derive(Clone)]
pub struct Slot {
    /// Container name.
    pub name: String,
    /// Image, as recorded.
    pub image: String,
    /// The running (or last) instance.
    pub handle: Option<Arc<dyn ContainerHandle>>,
    /// Current state.
    pub state: ContainerState,
    /// The previous instance's termination.
    pub last_state: Option<ContainerState>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness (probe result, or running when there is no readiness probe).
    pub ready: bool,
    /// Startup probe passed (or none) while running.
    pub started: bool,
    /// The runtime's container id (`scheme://id`), once started.
    pub container_id: Option<String>,
}

impl Slot {
    /// A container that has not been created yet.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            handle: None,
            state: waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            container_id: None,
        }
    }

    /// Whether the container's current state is running.
    pub fn running(&self) -> bool {
        self.state.running.is_some()
    }

    /// The exit code of the current terminated state.
    pub fn exit_code(&self) -> Option<i32> {
        self.state.terminated.as_ref().map(|t| t.exit_code)
    }

    fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: self.container_id.clone(),
            state: Some(self.state.clone()),
            last_state: Some(self.last_state.clone().unwrap_or_default()),
            ready: self.ready,
            restart_count: self.restart_count,
            started: Some(self.started && self.running()),
            ..Default::default()
        }
    }
}

/// The pod conditions the node owns; others (readiness gates, DisruptionTarget) belong to
/// other writers.
pub fn node_condition(type_: &str) -> bool {
    matches!(
        type_,
        "PodReadyToStartContainers" | "Initialized" | "ContainersReady" | "Ready"
    )
}

/// The strategic merge patch that writes the node's part of a pod's status: its own
/// conditions only (other writers' stay as they are), each with `reason` and `message` set to
/// null when it has none, since conditions merge by type and a field left out would keep an
/// earlier text (a Ready condition turned True still saying "containers with unready status").
pub fn status_patch(status: &PodStatus) -> serde_json::Value {
    let mut status = status.clone();
    if let Some(cs) = status.conditions.as_mut() {
        cs.retain(|c| node_condition(&c.type_));
    }
    let mut body = serde_json::json!({ "status": status });
    if let Some(cs) = body["status"]["conditions"].as_array_mut() {
        for c in cs.iter_mut().filter_map(serde_json::Value::as_object_mut) {
            for field in ["reason", "message"] {
                c.entry(field).or_insert(serde_json::Value::Null);
            }
        }
    }
    body
}

/// A waiting state.
pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

/// A running state started now.
pub fn running() -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(Time(Timestamp::now())),
        }),
        ..Default::default()
    }
}

/// A terminated state from an exit.
pub fn terminated(
    exit: &Exit,
    started: Option<Time>,
    container_id: Option<String>,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.code,
            signal: exit.signal,
            reason: Some(exit.reason.clone()),
            message: exit.message.clone(),
            started_at: started,
            finished_at: Some(Time(exit.finished_at)),
            container_id,
        }),
        ..Default::default()
    }
}

/// A phase decided outside the containers (rejection at admission, node shutdown).
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Failed` (or `Succeeded`).
    pub phase: &'static str,
    /// Upstream reason (`OutOfcpu`, `NodeAffinity`, `Terminated`, ...).
    pub reason: String,
    /// The message.
    pub message: String,
}

/// What the worker knows about its pod.
pub struct PodState {
    /// The latest pod object.
    pub pod: Arc<Pod>,
    /// Pod IPs once the sandbox exists.
    pub ips: Vec<String>,
    /// The node's IP.
    pub host_ip: String,
    /// When the worker first took the pod.
    pub start_time: Time,
    /// The sandbox exists.
    pub sandbox_ready: bool,
    /// Init containers in order.
    pub init: Vec<Slot>,
    /// App containers in order.
    pub app: Vec<Slot>,
    /// A phase decided outside the containers.
    pub verdict: Option<Verdict>,
}

impl PodState {
    /// State for a pod just taken by the worker.
    pub fn new(pod: Arc<Pod>, host_ip: String) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let slots = |cs: &[k8s_openapi::api::core::v1::Container], init: bool| {
            cs.iter()
                .map(|c| {
                    let mut s = Slot::new(&c.name, c.image.as_deref().unwrap_or(""));
                    if init {
                        s.state = waiting("PodInitializing", None);
                    }
                    s
                })
                .collect::<Vec<_>>()
        };
        let init = slots(spec.init_containers.as_deref().unwrap_or(&[]), true);
        let mut app = slots(&spec.containers, false);
        if !init.is_empty() {
            for s in &mut app {
                s.state = waiting("PodInitializing", None);
            }
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or(Time(Timestamp::now()));
        Self {
            pod,
            ips: Vec::new(),
            host_ip,
            start_time,
            sandbox_ready: false,
            init,
            app,
            verdict: None,
        }
    }

    /// Finds a container (init or app) by name.
    pub fn slot_mut(&mut self, init: bool, i: usize) -> &mut Slot {
        if init {
            &mut self.init[i]
        } else {
            &mut self.app[i]
        }
    }

    /// The handle of the named container, if it has one.
    pub fn handle(&self, name: &str) -> Option<Arc<dyn ContainerHandle>> {
        self.init
            .iter()
            .chain(&self.app)
            .find(|s| s.name == name)
            .and_then(|s| s.handle.clone())
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn init_done(&self) -> bool {
        self.init
            .iter()
            .all(|s| s.exit_code() == Some(0) || s.running())
    }

    /// The pod phase, as upstream's kubelet computes it.
    pub fn phase(&self) -> &'static str {
        if let Some(v) = &self.verdict {
            return v.phase;
        }
        let policy = self.restart_policy();
        if self
            .init
            .iter()
            .any(|s| s.exit_code().is_some_and(|c| c != 0))
            && policy == "Never"
        {
            return "Failed";
        }
        if !self.init_done() {
            return "Pending";
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for s in &self.app {
            if s.running() {
                running += 1;
            } else if let Some(code) = s.exit_code() {
                stopped += 1;
                if code == 0 {
                    succeeded += 1;
                }
            } else if s
                .last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
            {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            if policy == "Always" {
                "Running"
            } else if stopped == succeeded {
                "Succeeded"
            } else if policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        } else {
            "Pending"
        }
    }

    /// The whole status, keeping `old`'s condition transition times and the conditions the
    /// kubelet does not own (PodScheduled, DisruptionTarget, readiness gates).
    pub fn build(&self, old: Option<&PodStatus>) -> PodStatus {
        let now = Time(Timestamp::now());
        let phase = self.phase();
        let old_conds = old.and_then(|o| o.conditions.clone()).unwrap_or_default();
        let keep = |t: &str, status: &str| -> Time {
            old_conds
                .iter()
                .find(|c| c.type_ == t && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone())
        };
        let cond = |t: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            PodCondition {
                type_: t.into(),
                status: status.into(),
                last_transition_time: Some(keep(t, status)),
                reason: if ok { None } else { reason.map(str::to_string) },
                message: if ok { None } else { message },
                ..Default::default()
            }
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        let unready: Vec<&str> = self
            .app
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.as_str())
            .collect();
        let uninit: Vec<&str> = self
            .init
            .iter()
            .filter(|s| s.exit_code() != Some(0))
            .map(|s| s.name.as_str())
            .collect();
        let gates: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .map(|g| g.iter().map(|g| g.condition_type.clone()).collect())
            .unwrap_or_default();
        let gates_ok = gates.iter().all(|g| {
            old_conds
                .iter()
                .any(|c| &c.type_ == g && c.status == "True")
        });
        let containers_ready = unready.is_empty() && !terminal;
        let initialized = uninit.is_empty() || (self.init_done() && !self.init.is_empty());
        let names = |v: &[&str]| format!("[{}]", v.join(" "));
        let mut conditions: Vec<PodCondition> = old_conds
            .iter()
            .filter(|c| !node_condition(&c.type_))
            .cloned()
            .collect();
        conditions.push(cond(
            "PodReadyToStartContainers",
            self.sandbox_ready && !terminal,
            None,
            None,
        ));
        conditions.push(cond(
            "Initialized",
            initialized || self.verdict.is_some(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: {}",
                names(&uninit)
            )),
        ));
        let (ready_reason, ready_msg) = if terminal {
            ("PodCompleted", None)
        } else {
            (
                "ContainersNotReady",
                Some(format!(
                    "containers with unready status: {}",
                    names(&unready)
                )),
            )
        };
        conditions.push(cond(
            "ContainersReady",
            containers_ready,
            Some(ready_reason),
            ready_msg.clone(),
        ));
        let ready = containers_ready && gates_ok;
        let ready_msg = if containers_ready && !gates_ok {
            Some(format!(
                "corresponding condition of pod readiness gate {:?} does not exist.",
                gates.join(" ")
            ))
        } else {
            ready_msg
        };
        let ready_reason = if containers_ready && !gates_ok {
            "ReadinessGatesNotReady"
        } else {
            ready_reason
        };
        conditions.push(cond("Ready", ready, Some(ready_reason), ready_msg));
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let ips: Vec<String> = if host_network {
            vec![self.host_ip.clone()]
        } else {
            self.ips.clone()
        };
        let mut st = PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(self.host_ip.clone()),
            host_ips: Some(vec![HostIP {
                ip: self.host_ip.clone(),
            }]),
            pod_ip: ips.first().cloned(),
            pod_ips: (!ips.is_empty())
                .then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
            start_time: Some(self.start_time.clone()),
            container_statuses: Some(self.app.iter().map(Slot::status).collect()),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(Slot::status).collect()),
            qos_class: old.and_then(|o| o.qos_class.clone()),
            ..Default::default()
        };
        if let Some(v) = &self.verdict {
            st.reason = (!v.reason.is_empty()).then(|| v.reason.clone());
            st.message = (!v.message.is_empty()).then(|| v.message.clone());
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod(policy: &str, init: usize, app: usize) -> Arc<Pod> {
        let c = |i: usize| Container {
            name: format!("c{i}"),
            ..Default::default()
        };
        Arc::new(Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                init_containers: Some((0..init).map(c).collect()),
                containers: (0..app).map(c).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn exit(s: &mut Slot, code: i32) {
        s.state = terminated(&Exit::with_code(code), None, None);
    }

    #[test]
    fn phases_follow_upstream() {
        let mut st = PodState::new(pod("Always", 1, 2), "10.0.0.1".into());
        assert_eq!(st.phase(), "Pending");
        exit(&mut st.init[0], 0);
        assert_eq!(st.phase(), "Pending", "app containers still waiting");
        st.app[0].state = running();
        st.app[1].state = running();
        assert_eq!(st.phase(), "Running");
        exit(&mut st.app[0], 1);
        exit(&mut st.app[1], 0);
        assert_eq!(st.phase(), "Running", "Always restarts them");

        let mut st = PodState::new(pod("Never", 0, 2), "10.0.0.1".into());
        exit(&mut st.app[0], 0);
        exit(&mut st.app[1], 0);
        assert_eq!(st.phase(), "Succeeded");
        exit(&mut st.app[1], 2);
        assert_eq!(st.phase(), "Failed");

        let mut st = PodState::new(pod("OnFailure", 0, 1), "10.0.0.1".into());
        exit(&mut st.app[0], 2);
        assert_eq!(
            st.phase(),
            "Running",
            "OnFailure restarts a failed container"
        );
        exit(&mut st.app[0], 0);
        assert_eq!(st.phase(), "Succeeded");

        let mut st = PodState::new(pod("Never", 1, 1), "10.0.0.1".into());
        exit(&mut st.init[0], 1);
        assert_eq!(
            st.phase(),
            "Failed",
            "a failed init container fails a Never pod"
        );
    }

    #[test]
    fn conditions_name_unready_containers_and_keep_transition_times() {
        let mut st = PodState::new(pod("Always", 0, 2), "10.0.0.1".into());
        st.sandbox_ready = true;
        st.ips = vec!["10.244.0.5".into()];
        st.app[0].state = running();
        st.app[0].ready = true;
        let s1 = st.build(None);
        let ready = |s: &PodStatus, t: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&s1, "Ready").status, "False");
        assert_eq!(
            ready(&s1, "ContainersReady").message.as_deref(),
            Some("containers with unready status: [c1]")
        );
        assert_eq!(s1.pod_ip.as_deref(), Some("10.244.0.5"));
        let t = ready(&s1, "Initialized").last_transition_time;
        std::thread::sleep(std::time::Duration::from_millis(5));
        st.app[1].state = running();
        st.app[1].ready = true;
        let s2 = st.build(Some(&s1));
        assert_eq!(ready(&s2, "Ready").status, "True");
        assert_eq!(ready(&s2, "Initialized").last_transition_time, t);
        assert_eq!(s2.phase.as_deref(), Some("Running"));
        // The patch clears the texts a condition no longer has, and carries only the node's
        // conditions.
        let mut with_gate = s2.clone();
        with_gate.conditions.as_mut().unwrap().push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            ..Default::default()
        });
        let patch = status_patch(&with_gate);
        let conds = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 4, "{conds:?}");
        let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert!(ready["reason"].is_null() && ready["message"].is_null());
        assert!(ready.as_object().unwrap().contains_key("message"));
        let patch = status_patch(&s1);
        let unready = &patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ContainersReady")
            .unwrap()["message"];
        assert_eq!(unready, "containers with unready status: [c1]");
    }
}
