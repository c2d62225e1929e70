//! Generates the `warren.v1` types. A vendored `protoc` is used unless `PROTOC`
//! is set, so a fresh machine builds without installing anything.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_with_config(config, &["proto/warren/v1/bridge.proto"], &["proto"])?;
    Ok(())
}
