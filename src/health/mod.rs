//! Health answers for load balancers and orchestrators, lightship-style: `/ready`, `/live` and
//! `/health`, computed from the run's atomic state and its gate, the same in C, Python and Node.
//!
//! - [`answer`] turns a [`Snapshot`] and a path into a [`Report`] (status and body): the one
//!   place the rules live. The runner's `health` method (and `ld_runner_health`, and the
//!   bindings' WSGI/ASGI/aiohttp/Express/Koa/Fastify handlers) use it for a route on the
//!   server's own port.
//! - [`server`] is the optional built-in listener (`Options::health_address`): a small HTTP/1.1
//!   server on its own thread, so probes are answered even while every server thread is busy.
//!
//! The rules:
//! - `/ready` (also `/readyz`): 200 while the state [is healthy](State::is_healthy) (`READY`,
//!   `UPGRADING`, `HANDING_OVER`, whose port the new process serves), 503 otherwise — from the
//!   trigger on, so a balancer stops sending during the drain delay.
//! - `/live` (also `/livez`): 200 unless the process is really stuck: `close` has been running
//!   for longer than the close timeout, or the run abandoned hooks that never returned.
//!   A process in lame-duck is alive: restarting it would cut the requests it is finishing.
//! - `/health` (also `/healthz`): a small JSON body (state, ready, live, pid, generation and
//!   the gate's counts), 200 when ready and 503 otherwise.

pub(crate) mod http;
pub(crate) mod server;

use std::fmt::Write as _;

use crate::gate::GateStats;
use crate::state::State;

/// What a health answer is computed from: read from atomics, never blocking on the run.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The run's state, as [`crate::Runner::state`] reports it.
    pub state: State,
    /// False once the process is stuck (see the module docs).
    pub live: bool,
    /// This process.
    pub pid: u32,
    /// 1 for a process started by hand; one more for each upgrade in its line (or
    /// start_server's `SERVER_STARTER_GENERATION`).
    pub generation: u64,
    /// The connection gate's counts.
    pub connections: GateStats,
}

/// Which answer a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ready`, `/readyz`.
    Ready,
    /// `/live`, `/livez`.
    Live,
    /// `/health`, `/healthz`.
    Health,
}

impl Endpoint {
    /// The endpoint a request path names; a query string is ignored. `None`: not a health path.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        match path {
            "/ready" | "/readyz" => Some(Endpoint::Ready),
            "/live" | "/livez" => Some(Endpoint::Live),
            "/health" | "/healthz" => Some(Endpoint::Health),
            _ => None,
        }
    }
}

/// An HTTP answer: the status and a body of `content_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// 200, 503, or 404 for a path that is not a health endpoint.
    pub status: u16,
    /// `text/plain; charset=utf-8` or `application/json`.
    pub content_type: &'static str,
    /// The body (a line of text, or the JSON document).
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// The answer for `path` (see the module docs for the rules).
pub fn answer(snapshot: &Snapshot, path: &str) -> Report {
    let ready = snapshot.state.is_healthy();
    let text = |status: u16, body: String| Report { status, content_type: TEXT, body };
    match Endpoint::from_path(path) {
        Some(Endpoint::Ready) if ready => text(200, "ready\n".into()),
        Some(Endpoint::Ready) => text(503, format!("not ready: {}\n", snapshot.state)),
        Some(Endpoint::Live) if snapshot.live => text(200, "live\n".into()),
        Some(Endpoint::Live) => text(503, format!("not live: stuck in {}\n", snapshot.state)),
        Some(Endpoint::Health) => Report { status: if ready { 200 } else { 503 }, content_type: JSON, body: json(snapshot) },
        None => text(404, "not found: the health endpoints are /ready, /live and /health\n".into()),
    }
}

/// The `/health` document, one line:
/// `{"state":"READY","ready":true,"live":true,"pid":…,"generation":1,"connections":{…}}`.
pub fn json(s: &Snapshot) -> String {
    let c = &s.connections;
    let limit = c.limit.map_or_else(|| "null".to_string(), |l| l.to_string());
    let mut out = String::with_capacity(200);
    let _ = writeln!(
        out,
        "{{\"state\":\"{}\",\"ready\":{},\"live\":{},\"pid\":{},\"generation\":{},\"connections\":{{\"limit\":{limit},\
         \"admitted\":{},\"waiting\":{},\"total\":{},\"peak\":{},\"phase\":\"{}\"}}}}",
        s.state,
        s.state.is_healthy(),
        s.live,
        s.pid,
        s.generation,
        c.admitted,
        c.waiting,
        c.total,
        c.peak,
        c.phase.name()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GatePhase;

    fn snapshot(state: State, live: bool) -> Snapshot {
        Snapshot {
            state,
            live,
            pid: 42,
            generation: 3,
            connections: GateStats { limit: Some(10), admitted: 2, waiting: 1, total: 7, peak: 5, phase: GatePhase::Open },
        }
    }

    #[test]
    fn ready_follows_the_healthy_states() {
        for state in State::ALL {
            let report = answer(&snapshot(*state, true), "/ready");
            assert_eq!(report.status == 200, state.is_healthy(), "{state}");
        }
        assert_eq!(answer(&snapshot(State::Draining, true), "/readyz?verbose").body, "not ready: DRAINING\n");
    }

    #[test]
    fn live_only_fails_when_stuck() {
        assert_eq!(answer(&snapshot(State::Closing, true), "/live").status, 200);
        assert_eq!(answer(&snapshot(State::Closing, false), "/livez").status, 503);
    }

    #[test]
    fn health_is_json_with_the_counts() {
        let report = answer(&snapshot(State::Upgrading, true), "/health");
        assert_eq!(report.status, 200);
        assert_eq!(report.content_type, "application/json");
        assert_eq!(
            report.body,
            "{\"state\":\"UPGRADING\",\"ready\":true,\"live\":true,\"pid\":42,\"generation\":3,\"connections\":\
             {\"limit\":10,\"admitted\":2,\"waiting\":1,\"total\":7,\"peak\":5,\"phase\":\"open\"}}\n"
        );
        let mut unlimited = snapshot(State::ShuttingDown, true);
        unlimited.connections.limit = None;
        let report = answer(&unlimited, "/healthz");
        assert_eq!(report.status, 503);
        assert!(report.body.contains("\"limit\":null"), "{}", report.body);
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in ["/", "", "/ready/", "/READY", "/health/x", "ready"] {
            assert_eq!(answer(&snapshot(State::Ready, true), path).status, 404, "{path:?}");
        }
    }
}
