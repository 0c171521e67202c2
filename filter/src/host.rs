//! The one layer that talks to Envoy (proxy-wasm ABI 0.2.1): it gathers
//! what [`crate::decide`] needs, carries out what it decides, keeps the
//! counters and writes the logs. No policy lives here.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result` for
//! the statuses a call documents (a missing value, a CAS mismatch) rather
//! than the trait helpers, which unwrap. The SDK still panics (a VM trap)
//! on a status a call never returns in Envoy, which this code cannot catch.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::{self, Config};
use crate::decide::{self, Admitted, BodyAction, HeadersAction, RequestHead, STRIPPED_HEADERS};
use crate::outcome::Outcome;
use crate::reply::Reply;
use crate::request_headers::RequestHeaders;
use crate::table::{self, Seed, SharedStore, StoreError};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// Envoy's shared data: one store per process (per `vm_id`), all workers.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|s| StoreError::Host(format!("{s:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(s) => Err(StoreError::Host(format!("{s:?}"))),
        }
    }
}

/// The counters, as defined in this VM (`signalgate.<outcome>` and
/// `signalgate.rate_limit_errors`).
#[derive(Default)]
struct Metrics {
    outcomes: Vec<Option<u32>>,
    limit_errors: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("signalgate.{name}")).ok()
        };
        Metrics {
            outcomes: Outcome::ALL.iter().map(|o| counter(o.name())).collect(),
            limit_errors: counter("rate_limit_errors"),
        }
    }

    fn count(&self, outcome: Outcome) {
        if let Some(Some(id)) = self.outcomes.get(outcome.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn count_limit_error(&self) {
        if let Some(id) = self.limit_errors {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// Random bytes for a seed (WASI `random_get`, through the standard
/// library's hash-map keys: each `RandomState` is freshly keyed).
fn random_seed() -> Seed {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    Seed(bytes)
}

/// How often a VM re-reads the seed, in case another VM stored another one
/// at the same instant as it did (only possible at start-up): until then,
/// for at most this long, the two place a source in different slots.
const SEED_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Root {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    /// The bucket table's hash seed, shared with this VM's requests.
    seed: Rc<Cell<Seed>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten();
        let config = match config::parse(bytes.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                return false;
            }
        };
        match table::init(&HostStore) {
            Ok(created) if created > 0 => log(
                LogLevel::Debug,
                &format!("created {created} rate-limit slots in shared data"),
            ),
            Ok(_) => {}
            Err(e) => log(
                LogLevel::Warn,
                &format!("cannot create the rate-limit slots: {e:?}"),
            ),
        }
        match table::seed(&HostStore, random_seed()) {
            Ok(seed) => self.seed.set(seed),
            Err(e) => log(
                LogLevel::Warn,
                &format!("cannot share the hash seed: {e:?}"),
            ),
        }
        let _ = hostcalls::set_tick_period(SEED_CHECK);
        if self.metrics.outcomes.is_empty() {
            self.metrics = Rc::new(Metrics::define());
        }
        log(LogLevel::Info, &format!("configured: {}", config.summary()));
        self.config = Rc::new(config);
        true
    }

    fn on_tick(&mut self) {
        // The stored seed (another VM's, if two stored theirs at once), or
        // this VM's stored now if storing it failed at configure time.
        if let Ok(seed) = table::seed(&HostStore, random_seed()) {
            self.seed.set(seed);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Edge {
            config: Rc::clone(&self.config),
            metrics: Rc::clone(&self.metrics),
            seed: Rc::clone(&self.seed),
            admitted: None,
            forwarded: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
struct Edge {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    seed: Rc<Cell<Seed>>,
    /// Set once the headers passed: the body is being read.
    admitted: Option<Admitted>,
    /// Set once the request went on to the sidecar.
    forwarded: bool,
}

/// The request headers, fetched in one host call (each call costs a round
/// trip between the VM and Envoy).
fn request_headers() -> RequestHeaders {
    RequestHeaders(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default())
}

impl Edge {
    fn refuse(&mut self, reply: &Reply) -> Action {
        self.admitted = None;
        self.metrics.count(reply.outcome);
        log(LogLevel::Debug, &reply.reason);
        let _ = hostcalls::send_http_response(
            u32::from(reply.status),
            reply.all_headers(),
            Some(reply.body.as_bytes()),
        );
        Action::Pause
    }

    /// The whole body (`size` bytes) is buffered: validate and forward or refuse.
    fn finish(&mut self, size: usize) -> Action {
        let Some(signal_type) = self.admitted.as_ref().map(|a| a.signal_type) else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match decide::validate_body(&self.config, signal_type, &body) {
            Some(reply) => self.refuse(&reply),
            None => {
                self.metrics.count(Outcome::Accepted);
                self.forwarded = true;
                Action::Continue
            }
        }
    }
}

impl Context for Edge {}

impl HttpContext for Edge {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = request_headers();
        let method = headers.get(":method").unwrap_or_default();
        let path = headers.get(":path").unwrap_or_default();
        let content_type = headers.get("content-type");
        let content_length = headers.get("content-length");
        let authorization = if self.config.tenants.is_some() {
            headers.get("authorization")
        } else {
            None
        };
        let remote = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let source_header = headers.source_header(&self.config.source);
        let head = RequestHead {
            method: &method,
            path: &path,
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            authorization: authorization.as_deref(),
            remote_address: remote.as_deref(),
            source_header: source_header.as_deref(),
        };
        let seed = self.seed.get();
        match decide::on_headers(&self.config, &head, &HostStore, &seed, now_ns()) {
            HeadersAction::Refuse(reply) => self.refuse(&reply),
            HeadersAction::ReadBody(admitted) => {
                for (name, value) in admitted.forward_headers() {
                    // Replaces every copy the client sent.
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                }
                for name in STRIPPED_HEADERS {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
                }
                if let Some(why) = &admitted.limit_error {
                    self.metrics.count_limit_error();
                    log(LogLevel::Warn, &format!("{why}; letting it through"));
                }
                self.admitted = Some(admitted);
                if end_of_stream {
                    // No body at all.
                    self.finish(0)
                } else {
                    Action::Pause
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.admitted.is_none() || self.forwarded {
            return Action::Continue;
        }
        match decide::on_body(&self.config, body_size, end_of_stream) {
            BodyAction::Wait => Action::Pause,
            BodyAction::Refuse(reply) => self.refuse(&reply),
            BodyAction::Validate => self.finish(body_size),
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body: the body callback with end_of_stream does
        // not come then, so validate here.
        if self.admitted.is_none() || self.forwarded {
            return Action::Continue;
        }
        let size = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, usize::MAX)
            .ok()
            .flatten()
            .map_or(0, |b| b.len());
        match decide::on_body(&self.config, size, true) {
            BodyAction::Refuse(reply) => self.refuse(&reply),
            _ => self.finish(size),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.forwarded {
            if let Some(a) = &self.admitted {
                for (name, value) in &a.response_headers {
                    let _ = hostcalls::set_map_value(
                        MapType::HttpResponseHeaders,
                        name,
                        Some(value.as_str()),
                    );
                }
            }
        }
        Action::Continue
    }
}
