//! signalgate edge filter (work in progress).
