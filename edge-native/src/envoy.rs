//! Safe wrappers over the callbacks in [`crate::abi`]: logging, counters,
//! and one stream's headers, body, source address and local reply. The
//! only `unsafe` calls into Envoy are here.
//!
//! Buffers Envoy hands out (header names and values, body chunks) stay
//! valid until the end of the current event hook unless a setter is called:
//! the borrows below are tied to the [`Stream`] and read before any write.

use std::slice;

use crate::abi::{self, EnvoyBuffer, HttpHeader, ModuleBuffer};

/// Log levels the module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl Level {
    fn abi(self) -> u32 {
        match self {
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
            Level::Critical => abi::LOG_CRITICAL,
        }
    }
}

/// Whether `level` is logged (Envoy's `dynamic_modules` component).
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: a plain call with an enum value from abi.h.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level.abi()) }
}

/// Logs under Envoy's `dynamic_modules` component, prefixed `signalgate: `.
pub fn log(level: Level, message: &str) {
    let line = format!("signalgate: {message}");
    // SAFETY: the buffer is valid for the call; Envoy copies it.
    unsafe {
        abi::envoy_dynamic_module_callback_log(level.abi(), ModuleBuffer::of(line.as_bytes()))
    }
}

/// Bytes Envoy owns, for as long as `'a`.
///
/// # Safety
/// `ptr` must be null, or point to `length` readable bytes living for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        // SAFETY: as promised by the caller.
        unsafe { slice::from_raw_parts(ptr, length) }
    }
}

/// The filter configuration Envoy is creating (valid during
/// `on_http_filter_config_new`).
pub struct ConfigHandle(pub abi::ConfigEnvoyPtr);

impl ConfigHandle {
    /// Defines the counter `name` (without labels) and returns its id.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: the config pointer is Envoy's for this call; `id` is a
        // valid out pointer; no labels.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == abi::METRICS_SUCCESS).then_some(id)
    }
}

/// One HTTP stream, as Envoy hands it to an event hook.
pub struct Stream(abi::FilterEnvoyPtr);

impl Stream {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` Envoy passed to the current hook.
    pub unsafe fn new(ptr: abi::FilterEnvoyPtr) -> Stream {
        Stream(ptr)
    }

    /// Adds one to a counter defined by the stream's configuration.
    pub fn increment(&self, counter: usize) {
        // SAFETY: the id came from `define_counter` on this stream's config.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                counter,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }

    /// Every request header, in order, names in lower case. Values are
    /// bytes: Envoy lets through values that are not UTF-8.
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: the stream pointer is valid during the hook.
        let n = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, abi::REQUEST_HEADER)
        };
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![HttpHeader::EMPTY; n];
        // SAFETY: `raw` has room for the `n` headers Envoy reported.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.0,
                abi::REQUEST_HEADER,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled these with its header map's buffers,
                // valid until the hook returns or a header is set.
                unsafe {
                    (
                        bytes(h.key_ptr, h.key_length),
                        bytes(h.value_ptr, h.value_length),
                    )
                }
            })
            .collect()
    }

    fn set_header(&self, header_type: u32, name: &str, value: &str) {
        // SAFETY: both buffers are valid for the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// Sets a request header, replacing every copy the client sent.
    pub fn set_request_header(&self, name: &str, value: &str) {
        self.set_header(abi::REQUEST_HEADER, name, value);
    }

    /// Removes every copy of a request header (a null value, per abi.h).
    pub fn remove_request_header(&self, name: &str) {
        let none = abi::ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: the name buffer is valid for the call; a null value asks
        // Envoy to remove the header.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                none,
            );
        }
    }

    /// Sets a response header (in the response-headers hook).
    pub fn set_response_header(&self, name: &str, value: &str) {
        self.set_header(abi::RESPONSE_HEADER, name, value);
    }

    /// Envoy's `source.address` (`ip:port`), if known.
    pub fn source_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `out` is a valid out pointer.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                abi::ATTRIBUTE_SOURCE_ADDRESS,
                &mut out,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: Envoy filled `out` with a buffer valid during the hook.
        let value = unsafe { bytes(out.ptr, out.length) };
        Some(String::from_utf8_lossy(value).into_owned())
    }

    fn chunks(&self, body_type: u32) -> Vec<&[u8]> {
        // SAFETY: the stream pointer is valid during the hook.
        let n = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type)
        };
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyBuffer::EMPTY; n];
        // SAFETY: `raw` has room for the `n` chunks Envoy reported.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body_type,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            // SAFETY: Envoy's buffers, valid until the hook returns.
            .map(|c| unsafe { bytes(c.ptr, c.length) })
            .collect()
    }

    /// The request body seen so far, in order: what Envoy buffered for this
    /// filter, then the chunk of the current body hook (unless that chunk is
    /// the buffer itself, when a filter before resumed with it).
    pub fn request_body_chunks(&self) -> Vec<&[u8]> {
        // SAFETY: the stream pointer is valid during the hook.
        let received_is_buffer = unsafe {
            abi::envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
        };
        let mut chunks = Vec::new();
        if !received_is_buffer {
            chunks.extend(self.chunks(abi::BUFFERED_REQUEST_BODY));
        }
        chunks.extend(self.chunks(abi::RECEIVED_REQUEST_BODY));
        chunks
    }

    /// The size of [`Stream::request_body_chunks`], without reading them.
    pub fn request_body_size(&self) -> usize {
        // SAFETY: the stream pointer is valid during the hook.
        unsafe {
            let received = abi::envoy_dynamic_module_callback_http_get_body_size(
                self.0,
                abi::RECEIVED_REQUEST_BODY,
            );
            if abi::envoy_dynamic_module_callback_http_received_buffered_request_body(self.0) {
                received
            } else {
                received
                    + abi::envoy_dynamic_module_callback_http_get_body_size(
                        self.0,
                        abi::BUFFERED_REQUEST_BODY,
                    )
            }
        }
    }

    /// Answers locally; takes effect once the hook returns.
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut raw: Vec<HttpHeader> = headers
            .iter()
            .map(|(n, v)| HttpHeader {
                key_ptr: n.as_ptr(),
                key_length: n.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: every buffer lives until the call returns; Envoy copies.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }
}
