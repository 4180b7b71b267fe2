#!/usr/bin/env bash
# What each rustls crypto provider costs to build: a program that only builds a rustls
# ServerConfig with ring, then with aws-lc-rs, each in a fresh crate and target directory
# under a temporary folder: user CPU seconds of `cargo build --release` and the binary's
# size. (herald uses ring; docs/benchmarks.md#tls has the figures.)
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for p in ring aws_lc_rs; do
    mkdir -p "$dir/$p/src"
    cat >"$dir/$p/Cargo.toml" <<TOML
[package]
name = "provider_$p"
version = "0.1.0"
edition = "2021"
[dependencies]
rustls = { version = "0.23", default-features = false, features = ["$p", "std", "tls12"] }
TOML
    echo "fn main() { let _ = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::$p::default_provider())); }" >"$dir/$p/src/main.rs"
    (cd "$dir/$p" && cargo fetch -q && /usr/bin/time -f "$p: %U s user CPU, %e s wall" cargo build --release -q 2>&1 | tail -1)
    echo "$p: binary $(stat -c %s "$dir/$p/target/release/provider_$p") bytes"
done
