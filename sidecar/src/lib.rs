//! signalgate sidecar library.
