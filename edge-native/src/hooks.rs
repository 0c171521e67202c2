//! The event hooks Envoy 1.40 looks up in the module (`envoy_dynamic_module_on_*`):
//! program init and the 30 HTTP-filter hooks. Envoy refuses a module that
//! lacks any of them, so the ones this filter has no use for are exported as
//! no-ops that answer `Continue`.
//!
//! Nothing unwinds into Envoy: every hook that runs code of this crate runs
//! it under [`std::panic::catch_unwind`]. A panic while handling a request
//! answers 500 (problem+json) and counts `panics`; in configuration it
//! refuses the configuration; elsewhere it is logged and dropped.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::abi::{self, ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr, HttpHeader, ModulePtr};
use crate::envoy::{self, ConfigHandle, Level, Stream};
use crate::request::Request;
use crate::settings::Settings;
use crate::version;

/// Runs `f`, turning a panic into `None` (logged).
fn guarded<T>(hook: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            // Logging itself must not unwind either.
            let _ = catch_unwind(|| envoy::log(Level::Critical, &format!("panic in {hook}")));
            None
        }
    }
}

/// # Safety
/// `b.ptr` must be null, or point to `b.length` readable bytes living for `'a`.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        &[]
    } else {
        // SAFETY: as promised by the caller (Envoy, for the hook's duration).
        unsafe { std::slice::from_raw_parts(b.ptr, b.length) }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    #[cfg(feature = "fault-injection")]
    let built_for = crate::fault::built_for().unwrap_or(version::BUILT_FOR);
    #[cfg(not(feature = "fault-injection"))]
    let built_for = version::BUILT_FOR;
    let ok = guarded("program init", || match version::running() {
        Ok(v) => match version::supported(v, built_for) {
            Ok(()) => {
                envoy::log(
                    Level::Info,
                    &format!(
                        "running in Envoy {v}, ABI {}",
                        String::from_utf8_lossy(&abi::ABI_VERSION[..abi::ABI_VERSION.len() - 1])
                    ),
                );
                true
            }
            Err(why) => {
                envoy::log(Level::Critical, &why);
                false
            }
        },
        Err(why) => {
            envoy::log(
                Level::Warn,
                &format!("cannot tell which Envoy this is ({why}); loading anyway"),
            );
            true
        }
    });
    if ok == Some(true) {
        abi::ABI_VERSION.as_ptr()
    } else {
        std::ptr::null()
    }
}

// ------------------------------ configuration ------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guarded("filter config", || {
        // SAFETY: Envoy's buffer, valid during this hook.
        let bytes = unsafe { envoy_bytes(config) };
        match Settings::new(&ConfigHandle(config_envoy), bytes) {
            Some(s) => Arc::into_raw(Arc::new(s)).cast::<c_void>(),
            None => std::ptr::null(),
        }
    })
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    guarded("filter config destroy", || {
        if !config.is_null() {
            // SAFETY: made by `Arc::into_raw` in config_new; Envoy destroys it once.
            drop(unsafe { Arc::from_raw(config.cast::<Settings>()) });
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    let _ = guarded("per-route config", || {
        envoy::log(Level::Error, "per-route configuration is not supported");
    });
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: ModulePtr) {
}

// --------------------------------- streams ---------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    _filter_envoy: FilterEnvoyPtr,
) -> ModulePtr {
    guarded("filter new", || {
        if config.is_null() {
            return std::ptr::null();
        }
        let settings = config.cast::<Settings>();
        // SAFETY: `config` is a live `Arc<Settings>` from config_new (Envoy
        // destroys the config only after its streams): take one more count.
        let settings = unsafe {
            Arc::increment_strong_count(settings);
            Arc::from_raw(settings)
        };
        Box::into_raw(Box::new(Request::new(settings)))
            .cast_const()
            .cast::<c_void>()
    })
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: ModulePtr) {
    guarded("filter destroy", || {
        if !filter.is_null() {
            // SAFETY: made by `Box::into_raw` in filter_new; destroyed once.
            drop(unsafe { Box::from_raw(filter.cast_mut().cast::<Request>()) });
        }
    });
}

/// Runs a stream hook: `f` on the request, a 500 if it panics.
fn on_stream(
    hook: &str,
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    stopped: u32,
    f: impl FnOnce(&Request, &Stream) -> u32,
) -> u32 {
    if filter.is_null() {
        return abi::CONTINUE;
    }
    // SAFETY: Envoy passes the stream pointer for this hook.
    let stream = unsafe { Stream::new(filter_envoy) };
    let request = filter.cast::<Request>();
    // SAFETY: made in filter_new, alive until filter_destroy; Envoy calls a
    // stream's hooks on its worker thread only, and `Request` is only used
    // through shared references (see its documentation).
    let status = guarded(hook, || f(unsafe { &*request }, &stream));
    match status {
        Some(s) => s,
        None => {
            // SAFETY: as above; the panicking borrow has ended.
            let answered = guarded(hook, || unsafe { &*request }.fail(&stream));
            if answered.is_some() {
                stopped
            } else {
                abi::CONTINUE
            }
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream(
        "request headers",
        filter_envoy,
        filter,
        abi::HEADERS_STOP_ITERATION,
        |r, s| r.on_request_headers(s, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream(
        "request body",
        filter_envoy,
        filter,
        abi::BODY_STOP_NO_BUFFER,
        |r, s| r.on_request_body(s, end_of_stream),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
) -> u32 {
    on_stream(
        "request trailers",
        filter_envoy,
        filter,
        abi::TRAILERS_STOP_ITERATION,
        |r, s| r.on_request_trailers(s),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    on_stream(
        "response headers",
        filter_envoy,
        filter,
        abi::CONTINUE,
        |r, s| r.on_response_headers(s),
    )
}

// ------------------------ hooks this filter ignores ------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
) -> u32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _trailers: *mut HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _trailers: *mut HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}
