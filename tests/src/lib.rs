//! End-to-end tests of the whole platform live in `tests/tests/`; this
//! library holds the helpers they share.
