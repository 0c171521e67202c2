//! One request through the filter: gathers what [`decide`] needs from the
//! stream, carries out what it decides, keeps the counters. The same steps
//! as the proxy-wasm host (`filter/src/host.rs`); no policy lives here.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use signalgate_filter::decide::{self, Admitted, BodyAction, HeadersAction, RequestHead};
use signalgate_filter::outcome::Outcome;
use signalgate_filter::reply::Reply;
use signalgate_filter::source::SourceMode;

use crate::abi;
use crate::envoy::{self, Level, Stream};
use crate::settings::Settings;
use crate::store;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The request headers of one hook, by lower-case name.
struct Headers<'s>(Vec<(&'s [u8], &'s [u8])>);

impl Headers<'_> {
    fn text(v: &[u8]) -> Cow<'_, str> {
        String::from_utf8_lossy(v)
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| Self::text(v))
    }

    /// The last value of `name`: of a header a trusted proxy appends, the
    /// copy it wrote rather than one the client sent.
    fn last(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| Self::text(v))
    }

    /// Every value of `name` joined with `,`.
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<Cow<'_, str>> = self
            .0
            .iter()
            .filter(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| Self::text(v))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// The problem+json a caught panic is answered with.
pub const PANIC_BODY: &str = "{\"type\":\"about:blank\",\"title\":\"Internal Server Error\",\
\"status\":500,\"detail\":\"the edge filter failed on this request\"}";

/// One stream's state.
///
/// The hooks take `&self`: nothing in the ABI promises that a callback
/// (sending a local reply, setting a header) returns before Envoy calls
/// another hook of the same stream (Envoy 1.40 does not, for the local
/// replies seen here), so no `&mut` is held across a call into Envoy. The
/// state is in cells instead, and a `RefCell` borrow never spans such a call.
pub struct Request {
    settings: Arc<Settings>,
    /// Set once the headers passed: the body is being read.
    admitted: RefCell<Option<Admitted>>,
    /// Set once the request went on upstream.
    forwarded: Cell<bool>,
    /// Set once a local reply was sent: later hooks do nothing.
    answered: Cell<bool>,
    #[cfg(feature = "fault-injection")]
    fault: Cell<Option<crate::fault::Fault>>,
}

impl Request {
    pub fn new(settings: Arc<Settings>) -> Request {
        Request {
            settings,
            admitted: RefCell::new(None),
            forwarded: Cell::new(false),
            answered: Cell::new(false),
            #[cfg(feature = "fault-injection")]
            fault: Cell::new(None),
        }
    }

    fn refuse(&self, stream: &Stream, reply: &Reply) {
        self.admitted.replace(None);
        self.answered.set(true);
        self.settings.counters.count(stream, reply.outcome);
        if envoy::log_enabled(Level::Debug) {
            envoy::log(Level::Debug, &reply.reason);
        }
        stream.send_response(
            reply.status,
            &reply.all_headers(),
            reply.body.as_bytes(),
            reply.outcome.name(),
        );
    }

    /// Answers 500 after a caught panic, and counts it.
    pub fn fail(&self, stream: &Stream) {
        self.settings.counters.count_panic(stream);
        if self.answered.get() || self.forwarded.get() {
            return;
        }
        self.answered.set(true);
        self.admitted.replace(None);
        stream.send_response(
            500,
            &[("content-type", "application/problem+json")],
            PANIC_BODY.as_bytes(),
            "signalgate_panic",
        );
    }

    /// The value of the source header the configuration reads, if any.
    fn source_header(&self, headers: &Headers<'_>) -> Option<String> {
        match &self.settings.config.source {
            SourceMode::RemoteAddress => None,
            SourceMode::ForwardedFor { .. } => headers.joined("x-forwarded-for"),
            SourceMode::Header(name) => headers.last(name).map(Cow::into_owned),
        }
    }

    pub fn on_request_headers(&self, stream: &Stream, end_of_stream: bool) -> u32 {
        let settings = Arc::clone(&self.settings);
        let cfg = &settings.config;
        let action = {
            let headers = Headers(stream.request_headers());
            #[cfg(feature = "fault-injection")]
            {
                use crate::fault::{Fault, HEADER};
                self.fault.set(Fault::parse(headers.get(HEADER).as_deref()));
                Fault::trigger(self.fault.get(), Fault::PanicInHeaders);
            }
            let method = headers.get(":method").unwrap_or_default();
            let path = headers.get(":path").unwrap_or_default();
            let content_type = headers.get("content-type");
            let content_length = headers.get("content-length");
            let authorization = if cfg.tenants.is_some() {
                headers.get("authorization")
            } else {
                None
            };
            let remote = stream.source_address();
            let source_header = self.source_header(&headers);
            let head = RequestHead {
                method: &method,
                path: &path,
                content_type: content_type.as_deref(),
                content_length: content_length.as_deref(),
                authorization: authorization.as_deref(),
                remote_address: remote.as_deref(),
                source_header: source_header.as_deref(),
            };
            decide::on_headers(cfg, &head, store::process(), &settings.seed, now_ns())
        };
        match action {
            HeadersAction::Refuse(reply) => {
                self.refuse(stream, &reply);
                abi::HEADERS_STOP_ITERATION
            }
            HeadersAction::ReadBody(admitted) => {
                for (name, value) in admitted.forward_headers() {
                    stream.set_request_header(name, value);
                }
                for name in decide::STRIPPED_HEADERS {
                    stream.remove_request_header(name);
                }
                if let Some(why) = &admitted.limit_error {
                    settings.counters.count_limit_error(stream);
                    envoy::log(Level::Warn, &format!("{why}; letting it through"));
                }
                self.admitted.replace(Some(admitted));
                if end_of_stream {
                    // No body at all.
                    self.finish(stream, &[])
                } else {
                    abi::HEADERS_STOP_ITERATION
                }
            }
        }
    }

    /// The whole body is there: validate, then forward (`CONTINUE`) or refuse.
    fn finish(&self, stream: &Stream, chunks: &[&[u8]]) -> u32 {
        let Some(signal_type) = self.admitted.borrow().as_ref().map(|a| a.signal_type) else {
            return abi::CONTINUE;
        };
        let joined;
        let body: &[u8] = match chunks {
            [] => &[],
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        match decide::validate_body(&self.settings.config, signal_type, body) {
            Some(reply) => {
                self.refuse(stream, &reply);
                abi::BODY_STOP_NO_BUFFER
            }
            None => {
                self.settings.counters.count(stream, Outcome::Accepted);
                self.forwarded.set(true);
                abi::CONTINUE
            }
        }
    }

    /// Whether the body phase has nothing to do: no admitted request, or
    /// already forwarded.
    fn passing(&self) -> bool {
        self.admitted.borrow().is_none() || self.forwarded.get()
    }

    pub fn on_request_body(&self, stream: &Stream, end_of_stream: bool) -> u32 {
        if self.answered.get() {
            return abi::BODY_STOP_NO_BUFFER;
        }
        if self.passing() {
            return abi::CONTINUE;
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::Fault::trigger(self.fault.get(), crate::fault::Fault::PanicInBody);
        let size = stream.request_body_size();
        match decide::on_body(&self.settings.config, size, end_of_stream) {
            BodyAction::Wait => abi::BODY_STOP_AND_BUFFER,
            BodyAction::Refuse(reply) => {
                self.refuse(stream, &reply);
                abi::BODY_STOP_NO_BUFFER
            }
            BodyAction::Validate => self.finish(stream, &stream.request_body_chunks()),
        }
    }

    /// Trailers end the body: validate here (no body hook with
    /// end-of-stream comes then).
    pub fn on_request_trailers(&self, stream: &Stream) -> u32 {
        if self.answered.get() {
            return abi::TRAILERS_STOP_ITERATION;
        }
        if self.passing() {
            return abi::CONTINUE;
        }
        let size = stream.request_body_size();
        let status = match decide::on_body(&self.settings.config, size, true) {
            BodyAction::Refuse(reply) => {
                self.refuse(stream, &reply);
                abi::BODY_STOP_NO_BUFFER
            }
            _ => self.finish(stream, &stream.request_body_chunks()),
        };
        if status == abi::CONTINUE {
            abi::CONTINUE
        } else {
            abi::TRAILERS_STOP_ITERATION
        }
    }

    pub fn on_response_headers(&self, stream: &Stream) -> u32 {
        if !self.forwarded.get() {
            return abi::CONTINUE;
        }
        let headers = self
            .admitted
            .borrow()
            .as_ref()
            .map(|a| a.response_headers.clone())
            .unwrap_or_default();
        for (name, value) in &headers {
            stream.set_response_header(name, value);
        }
        abi::CONTINUE
    }
}
