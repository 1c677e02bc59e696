//! Compiles the bench's own proto (`proto/relay_floor.proto`, the bare
//! tonic relay `oma-bench` measures as the floor) with `protox`, as the
//! contract crate does: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/relay_floor.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
