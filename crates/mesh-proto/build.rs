//! Compiles the `.proto` contracts with protox (a protobuf compiler in Rust, so no
//! `protoc` is needed on the build machine) and generates tonic/prost code from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/isthmus/config.proto",
        "proto/isthmus/ca.proto",
        "proto/isthmus/peering.proto",
        "proto/isthmus/edges.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The edges package alone first: the others name its types by the flat module
    // (`crate::edges`), and code for an extern path is not generated.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile(["proto/isthmus/edges.proto"], ["proto"])?)?;
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Resource bodies are shared between proxies without copying.
        .bytes(".isthmus.config.v1.Resource.body")
        .bytes(".isthmus.peering.v1.ExportedService.body")
        // The modules are flat (`crate::edges`), not nested by package.
        .extern_path(".isthmus.edges.v1", "crate::edges")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
