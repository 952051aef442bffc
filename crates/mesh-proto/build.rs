//! Compiles the `.proto` contracts with protox (a protobuf compiler in Rust, so no
//! `protoc` is needed on the build machine) and generates tonic/prost code from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/isthmus/config.proto",
        "proto/isthmus/ca.proto",
        "proto/isthmus/peering.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Resource bodies are shared between proxies without copying.
        .bytes(".isthmus.config.v1.Resource.body")
        .bytes(".isthmus.peering.v1.ExportedService.body")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
