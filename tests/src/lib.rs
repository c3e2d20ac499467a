//! Harness that runs the real OpenCluster binaries (filled in by the test suite).
