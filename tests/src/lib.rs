//! Shared test fixtures
