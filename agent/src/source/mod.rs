//! Where desired state comes from. Every source produces a validated `Model`.
pub mod file;
pub mod kube;
mod toml_blocks;
